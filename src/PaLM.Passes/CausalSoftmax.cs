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

    public static (Graph Graph, int Count) Run(Graph g) => BlockFacts.FuseIntoConsumers(g, (n, producer, uses) =>
        n.Op.Name == "softmax" && producer.TryGetValue(n.Inputs[0], out var mask) && mask.Op.Name == "causal_mask"
        && uses[n.Inputs[0]] == 1 && (!mask.Attrs.TryGetValue("fill", out var fill) || fill is FloatAttr { Value: double.NegativeInfinity })
        && n.Attr<DimsAttr>("over").Names.SequenceEqual(mask.Attr<DimsAttr>("key").Names)
            ? (mask, new Node(OpTable.Get("causal_softmax"), [mask.Inputs[0]], n.Outputs, mask.Attrs.Remove("fill"), [], n.Loc))
            : null);
}
