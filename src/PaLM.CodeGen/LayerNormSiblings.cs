using PaLM.IR;

namespace PaLM.CodeGen;

/// <summary>
/// Sibling fusion of layer norm's two cotangents (XLA's multi-output fusion of siblings, after partitioning): a
/// <c>layernorm_dx(dy, x, scale)</c> and a later <c>layernorm_dscale(dy, x)</c> of the same dy, x and eps in one block
/// run as one <c>Rt.LayerNormGrads</c> call where the first stood, which reads dy and x once and normalizes each row
/// once for both (the two kernels each did both). Their results are the same bits as the two calls give.
/// Only this pair: the other ops that share operands are products, whose operands are read by BLAS, or elementwise ops,
/// which loop fusion's sibling rule already joins.
/// </summary>
public sealed class LayerNormSiblings
{
    public static LayerNormSiblings None { get; } = new();

    private readonly Dictionary<Node, Node> _scaleOf = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<Node> _absorbed = new(ReferenceEqualityComparer.Instance);

    private LayerNormSiblings() { }

    public LayerNormSiblings(Graph g)
    {
        void Visit(Block b)
        {
            var open = new List<Node>();
            foreach (var n in b.Nodes)
            {
                foreach (var r in n.Regions) Visit(r);
                if (n.Op.Name == "layernorm_dx") open.Add(n);
                else if (n.Op.Name == "layernorm_dscale" && open.FirstOrDefault(dx => Siblings(dx, n)) is { } first)
                {
                    _scaleOf[first] = n;
                    _absorbed.Add(n);
                    open.Remove(first);
                }
            }
        }
        Visit(g.Body);
    }

    /// <summary>Same dy, same x, same eps and normalized dim: the scale's rows are the input cotangent's rows.</summary>
    private static bool Siblings(Node dx, Node dscale) =>
        ReferenceEquals(dx.Inputs[0], dscale.Inputs[0]) && ReferenceEquals(dx.Inputs[1], dscale.Inputs[1])
        && dx.Attr<FloatAttr>("eps").Value == dscale.Attr<FloatAttr>("eps").Value
        && dx.Attr<DimsAttr>("over").Names.SequenceEqual(dscale.Attr<DimsAttr>("over").Names);

    /// <summary>The <c>layernorm_dscale</c> whose result <paramref name="dx"/>'s call also computes, or null.</summary>
    public Node? ScaleOf(Node dx) => _scaleOf.GetValueOrDefault(dx);

    /// <summary>Whether <paramref name="n"/>'s result comes from an earlier sibling's call (it emits nothing itself).</summary>
    public bool Absorbed(Node n) => _absorbed.Contains(n);
}
