using PaLM.IR;

namespace PaLM.Passes;

/// <summary>
/// Attention's row operations fused into the causal products that feed them (XLA's output fusion of a dot's consumer):
/// <list type="bullet">
/// <item><c>causal_softmax(causal_einsum(q, k))</c> becomes <c>causal_einsum_softmax(q, k)</c>: the scores are
/// normalized block by block right after their product, so they are never written out and read back;</item>
/// <item><c>softmax_grad(causal_einsum(dout, v), y)</c> over the key becomes <c>causal_einsum_softmax_grad(dout, v, y)</c>:
/// the probabilities' cotangent likewise.</item>
/// </list>
/// Only where the product has no other reader and keeps both the query and the key (its rows run along the key).
/// Runs on the per-device program after <see cref="CausalBlocks"/>, which makes the causal products. Each fused op
/// computes what the two ops did, for any operands (ContractionOps), so the rewrite needs no facts about zeros.
/// </summary>
public static class AttentionEpilogues
{
    public const string Name = "attention-epilogues";

    public static (Graph Graph, int Count) Run(Graph g) => BlockFacts.FuseIntoConsumers(g, (n, producer, uses) =>
    {
        if (n.Inputs.Length == 0 || !producer.TryGetValue(n.Inputs[0], out var p) || p.Op.Name != "causal_einsum" || uses[n.Inputs[0]] != 1)
            return null;
        var (q, k) = (p.Attr<DimsAttr>("query").Names[0], p.Attr<DimsAttr>("key").Names[0]);
        var output = p.Attr<DimsAttr>("output").Names;
        if (!output.Contains(q) || !output.Contains(k)) return null;
        switch (n.Op.Name)
        {
            case "causal_softmax" when n.Attr<DimsAttr>("query").Names[0] == q && n.Attr<DimsAttr>("key").Names[0] == k:
                return (p, new Node(OpTable.Get("causal_einsum_softmax"), p.Inputs, n.Outputs, p.Attrs, [], n.Loc));
            case "softmax_grad" when n.Attr<DimsAttr>("over").Names is [var over] && over == k && !ReferenceEquals(n.Inputs[1], n.Inputs[0]):
                var lists = p.Attr<DimListsAttr>("operands").Lists.Add(output);
                return (p, new Node(OpTable.Get("causal_einsum_softmax_grad"), [.. p.Inputs, n.Inputs[1]], n.Outputs,
                    p.Attrs.SetItem("operands", new DimListsAttr(lists)), [], n.Loc));
            default:
                return null;
        }
    });
}
