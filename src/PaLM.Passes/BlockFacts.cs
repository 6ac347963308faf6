using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Passes;

/// <summary>What the per-device rewrite passes (parallel-layer fusion, square reductions) read off a block before
/// rewriting it, and the graph they rebuild around a rewritten body.</summary>
internal static class BlockFacts
{
    /// <summary>How many times each value is read by <paramref name="nodes"/> or yielded as a block result.</summary>
    public static Dictionary<Value, int> Uses(IEnumerable<Node> nodes, IEnumerable<Value> results)
    {
        var uses = new Dictionary<Value, int>(ReferenceEqualityComparer.Instance);
        foreach (var v in nodes.SelectMany(n => n.Inputs).Concat(results)) uses[v] = uses.GetValueOrDefault(v) + 1;
        return uses;
    }

    /// <summary>The node that produces each value of <paramref name="nodes"/>.</summary>
    public static Dictionary<Value, Node> Producers(IEnumerable<Node> nodes)
    {
        var map = new Dictionary<Value, Node>(ReferenceEqualityComparer.Instance);
        foreach (var n in nodes) foreach (var o in n.Outputs) map[o] = n;
        return map;
    }

    /// <summary><paramref name="g"/> with a rewritten body (and dims, where the rewrite added some), keeping its
    /// outputs' shardings and donated updates.</summary>
    public static Graph WithBody(Graph g, Block body, ImmutableArray<Dim>? dims = null) =>
        new(g.Name, dims ?? g.Dims, g.Mesh, g.Args, body, g.OutputNames) { OutputSpmd = g.OutputSpmd, OutputUpdates = g.OutputUpdates };
}
