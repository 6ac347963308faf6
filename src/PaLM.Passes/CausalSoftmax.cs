using PaLM.IR;

namespace PaLM.Passes;

/// <summary>
/// <c>softmax(causal_mask(x, query, key), over=key)</c>, where the -inf mask is read by nothing else, becomes
/// <c>causal_softmax(x, query, key)</c>: one pass over each attention row that skips the masked keys, instead of a
/// pass that writes -inf over half the scores and another that exponentiates them to 0. Runs on the per-device program
/// after autodiff (the backward pass reads the softmax's result, which is unchanged).
/// </summary>
public static class CausalSoftmax
{
    public const string Name = "fuse-causal-softmax";

    public static (Graph Graph, int Count) Run(Graph g)
    {
        int count = 0;
        Block Rewrite(Block block)
        {
            var uses = BlockFacts.Uses(block.Nodes, block.Results);
            var producer = BlockFacts.Producers(block.Nodes);
            var fused = new HashSet<Node>();
            var nodes = new List<Node>(block.Nodes.Length);
            foreach (var n0 in block.Nodes)
            {
                var n = n0.Regions.IsEmpty ? n0 : new Node(n0.Op, n0.Inputs, n0.Outputs, n0.Attrs, [.. n0.Regions.Select(Rewrite)], n0.Loc);
                if (n.Op.Name == "softmax" && producer.TryGetValue(n.Inputs[0], out var mask) && mask.Op.Name == "causal_mask"
                    && uses[n.Inputs[0]] == 1 && (!mask.Attrs.TryGetValue("fill", out var fill) || fill is FloatAttr { Value: double.NegativeInfinity })
                    && n.Attr<DimsAttr>("over").Names.SequenceEqual(mask.Attr<DimsAttr>("key").Names))
                {
                    fused.Add(mask);
                    var attrs = mask.Attrs.Remove("fill");
                    nodes.Add(new Node(OpTable.Get("causal_softmax"), [mask.Inputs[0]], n.Outputs, attrs, [], n.Loc));
                    count++;
                    continue;
                }
                nodes.Add(n);
            }
            return new Block(block.Args, [.. nodes.Where(n => !fused.Contains(n))], block.Results);
        }
        var result = BlockFacts.WithBody(g, Rewrite(g.Body));
        Verifier.Verify(result);
        return (result, count);
    }
}
