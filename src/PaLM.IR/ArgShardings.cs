using System.Collections.Immutable;

namespace PaLM.IR;

/// <summary>
/// Re-annotates a graph's arguments, as JAX's <c>in_shardings</c> lays out a function's inputs without touching its
/// code: the layout search tries the same model under other parameter layouts this way.
/// </summary>
public static class ArgShardings
{
    /// <summary>
    /// A copy of <paramref name="g"/> whose argument annotations are <paramref name="annotate"/>(arg, current)
    /// (null: unannotated, left to propagation). Every other value and node is copied unchanged. The result is verified.
    /// </summary>
    public static Graph Rewrite(Graph g, Func<GraphArg, Sharding?, Sharding?> annotate)
    {
        var map = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
        var args = g.Args.Select(a =>
        {
            var v = a.Value;
            var nv = new Value(v.Id, v.Name, v.Type, annotate(a, v.Sharding), v.Loc);
            map[v] = nv;
            return a with { Value = nv };
        }).ToImmutableArray();
        Value M(Value v) => map.TryGetValue(v, out var m) ? m : v;
        Block Copy(Block b)
        {
            var nodes = b.Nodes.Select(n => new Node(n.Op, n.Inputs.Select(M).ToImmutableArray(), n.Outputs, n.Attrs,
                n.Regions.Select(Copy).ToImmutableArray(), n.Loc)).ToImmutableArray();
            return new Block(b.Args.Select(M).ToImmutableArray(), nodes, b.Results.Select(M).ToImmutableArray());
        }
        var result = new Graph(g.Name, g.Dims, g.Mesh, args, Copy(g.Body), g.OutputNames);
        Verifier.Verify(result);
        return result;
    }
}
