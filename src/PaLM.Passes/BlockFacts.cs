using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Passes;

/// <summary>What the per-device rewrite passes (parallel-layer fusion, square reductions, the causal softmax and blocks) read off a block before
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

    /// <summary>
    /// The peephole rewrite both producer-consumer fusions use (square reductions, the causal softmax): in every block,
    /// loop bodies included, a node for which <paramref name="match"/> returns a replacement is replaced by it, and the
    /// producer it names (read by nothing else, as <paramref name="match"/> checks with the use counts it is given) is
    /// dropped. Returns the verified graph and the number of rewrites.
    /// </summary>
    public static (Graph Graph, int Count) FuseIntoConsumers(Graph g,
        Func<Node, Dictionary<Value, Node>, Dictionary<Value, int>, (Node Producer, Node Replacement)?> match)
    {
        int count = 0;
        Block Rewrite(Block block)
        {
            var uses = Uses(block.Nodes, block.Results);
            var producer = Producers(block.Nodes);
            var fused = new HashSet<Node>();
            var nodes = new List<Node>(block.Nodes.Length);
            foreach (var n0 in block.Nodes)
            {
                var n = n0.Regions.IsEmpty ? n0 : new Node(n0.Op, n0.Inputs, n0.Outputs, n0.Attrs, [.. n0.Regions.Select(Rewrite)], n0.Loc);
                if (match(n, producer, uses) is var (p, replacement))
                {
                    fused.Add(p);
                    nodes.Add(replacement);
                    count++;
                }
                else nodes.Add(n);
            }
            return new Block(block.Args, [.. nodes.Where(n => !fused.Contains(n))], block.Results);
        }
        var result = WithBody(g, Rewrite(g.Body));
        Verifier.Verify(result);
        return (result, count);
    }

    /// <summary><paramref name="g"/> with a rewritten body (and dims, where the rewrite added some), keeping its
    /// outputs' shardings and donated updates.</summary>
    public static Graph WithBody(Graph g, Block body, ImmutableArray<Dim>? dims = null) =>
        new(g.Name, dims ?? g.Dims, g.Mesh, g.Args, body, g.OutputNames) { OutputSpmd = g.OutputSpmd, OutputUpdates = g.OutputUpdates };
}
