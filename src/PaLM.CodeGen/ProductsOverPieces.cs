using PaLM.IR;

namespace PaLM.CodeGen;

/// <summary>
/// Which products read a concatenation piece by piece instead of having it made (<c>Rt.EinsumOverPieces</c>): an einsum
/// of two operands, one of which is a concatenation along a dim the einsum's output keeps, that nothing else reads.
/// Each piece's product is then written into its slice of the result, so the join is never copied. Parallel-layer
/// fusion makes such joins in the backward pass: the saved SwiGLU and attention outputs, joined for the output
/// projections' weight gradient (31 MB a layer for palm-cpu), and those projections' transposed weights.
/// <para>
/// Conditions: every piece is at least <see cref="MinPiece"/> long along the joined dim (a narrow product runs far
/// below a wide one's speed: the forward's q/k/v/gate/up weights, with the multi-query key and value 64 columns each,
/// stay joined; read as [q k v], [gate], [up] the forward product took 360 ms a step against 345 with the join, whose
/// three products each pack the layer's input again); fp32; and the
/// concatenation stands right before the product, so no op runs between where the join would have read its pieces and
/// where the product now reads them (buffer donation decided who may overwrite them from the join's position).
/// A join over a contracted dim stays (splitting it would add a pass over the result per piece).
/// </para>
/// </summary>
public sealed class ProductsOverPieces
{
    /// <summary>The shortest piece along the joined dim that is read in place.</summary>
    public const long MinPiece = 256;

    /// <summary>A product over a join: operand <paramref name="Operand"/> of the einsum is <paramref name="Concat"/>'s
    /// result, joined along its dim <paramref name="Axis"/>.</summary>
    public sealed record Join(Node Concat, int Operand, long Axis);

    public static ProductsOverPieces None { get; } = new();

    private readonly Dictionary<Node, Join> _products = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<Node> _absorbed = new(ReferenceEqualityComparer.Instance);

    private ProductsOverPieces() { }

    public ProductsOverPieces(Graph g, ConcatDestinations loopJoins)
    {
        var readers = GraphReaders.Of(g);
        void Visit(Block b)
        {
            for (int i = 0; i < b.Nodes.Length; i++)
            {
                var n = b.Nodes[i];
                foreach (var r in n.Regions) Visit(r);
                if (i == 0 || n.Op.Name != "einsum" || n.Inputs.Length != 2) continue;
                var c = b.Nodes[i - 1];
                int operand = Array.FindIndex([.. n.Inputs], v => c.Outputs.Length == 1 && ReferenceEquals(v, c.Outputs[0]));
                if (operand < 0 || c.Op.Name != "concat" || loopJoins.HasPieces(c) || c.Outputs[0].Type.DType != DType.F32) continue;
                if (ReferenceEquals(n.Inputs[0], n.Inputs[1]) || readers.GetValueOrDefault(c.Outputs[0]) is not [(User: { } only, _)] || !ReferenceEquals(only, n)) continue;
                // `along` names each piece's own dim; the join's dim (`as`) stands at the same position.
                var along = c.Attr<DimsAttr>("along").Names[0];
                var axis = c.Inputs[0].Type.Dims.ToList().FindIndex(d => d.Name == along);
                // The einsum's own subscript for the joined dim (subscripts may rename a dim): kept by the output and
                // absent from the other operand (a batch subscript would pair each piece with all of it).
                var subscripts = n.Attr<DimListsAttr>("operands").Lists;
                if (axis < 0 || axis >= subscripts[operand].Length) continue;
                var label = subscripts[operand][axis];
                if (!n.Attr<DimsAttr>("output").Names.Contains(label) || subscripts[1 - operand].Contains(label)) continue;
                if (c.Inputs.Any(p => p.Type.Shape[axis] < MinPiece)) continue;
                _products[n] = new Join(c, operand, axis);
                _absorbed.Add(c);
            }
        }
        Visit(g.Body);
    }

    /// <summary>The join <paramref name="einsum"/> reads piece by piece, if any.</summary>
    public Join? Of(Node einsum) => _products.GetValueOrDefault(einsum);

    /// <summary>Whether <paramref name="concat"/> is read piece by piece by the product after it (and so not emitted).</summary>
    public bool Absorbed(Node concat) => _absorbed.Contains(concat);
}
