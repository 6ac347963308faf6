using PaLM.IR;

namespace PaLM.Passes;

/// <summary>
/// A product scaled by a power of two, <c>mul(einsum(a, b), c)</c>, becomes <c>einsum(mul(a, c), b)</c> with the
/// scale on the operand with the fewest elements. Attention's 1/√head_dim (0.125 for 64) moves from the scores
/// [batch, heads, seq, kseq] onto the multi-query key [batch, kseq, head_dim], 96 times smaller for palm-cpu, and
/// autodiff then scales the key's small gradient instead of the scores' cotangent: two passes over 50 MB a layer
/// become two over 0.5 MB. XLA's algebraic simplifier moves scalar multiplies across dots the same way.
/// <para>
/// Only where nothing else reads the einsum's result (and no <c>@shard</c> annotation sits on it), the operand is
/// smaller than the result, and the scale is a
/// constant power of two, which commutes exactly with fp rounding (outside subnormals): the step computes the same bits
/// as before. Runs on the global forward graph before autodiff, in every block (loop bodies included).
/// </para>
/// </summary>
public static class ScaleHoisting
{
    public const string Name = "hoist-scales-into-einsums";

    public static (Graph Graph, int Count) Run(Graph g)
    {
        var b = GraphBuilder.Continuing(g);
        int count = 0;
        Block Rewrite(Block block)
        {
            var uses = BlockFacts.Uses(block.Nodes, block.Results);
            var producer = BlockFacts.Producers(block.Nodes);
            var dropped = new HashSet<Node>();
            var nodes = new List<Node>(block.Nodes.Length + 4);
            foreach (var n0 in block.Nodes)
            {
                var n = n0.Regions.IsEmpty ? n0 : new Node(n0.Op, n0.Inputs, n0.Outputs, n0.Attrs, [.. n0.Regions.Select(Rewrite)], n0.Loc);
                if (Match(n, producer, uses) is not var (einsum, scale, k))
                {
                    nodes.Add(n);
                    continue;
                }
                // The scaled operand and the einsum go where the multiply stood: after the scale's definition.
                var operand = einsum.Inputs[k];
                var scaled = b.Apply(nodes, OpTable.Get("mul"), [operand, scale], GraphBuilder.Attrs(), [operand.Name + ".scaled"], n.Loc)[0];
                nodes.Add(new Node(einsum.Op, k == 0 ? [scaled, einsum.Inputs[1]] : [einsum.Inputs[0], scaled], n.Outputs, einsum.Attrs, [], einsum.Loc));
                dropped.Add(einsum);
                count++;
            }
            return new Block(block.Args, [.. nodes.Where(x => !dropped.Contains(x))], block.Results);
        }
        var result = BlockFacts.WithBody(g, Rewrite(g.Body));
        Verifier.Verify(result);
        return (result, count);
    }

    /// <summary>The einsum, the scale and the operand (0 or 1) to scale, when <paramref name="n"/> is such a multiply.</summary>
    private static (Node Einsum, Value Scale, int Operand)? Match(Node n, Dictionary<Value, Node> producer, Dictionary<Value, int> uses)
    {
        if (n.Op.Name != "mul" || n.Inputs.Length != 2) return null;
        var (product, scale) = n.Inputs[1].Type.Rank == 0 ? (n.Inputs[0], n.Inputs[1]) : (n.Inputs[1], n.Inputs[0]);
        if (scale.Type.Rank != 0 || product.Type.Rank == 0 || scale.Type.DType != product.Type.DType) return null;
        if (!producer.TryGetValue(scale, out var c) || c.Op.Name != "constant" || c.Attrs.GetValueOrDefault("value") is not FloatAttr { Value: var value }
            || !IsPowerOfTwo(value, product.Type.DType))
            return null;
        if (!producer.TryGetValue(product, out var e) || e.Op.Name != "einsum" || e.Inputs.Length != 2 || uses.GetValueOrDefault(product) != 1) return null;
        // The einsum's result disappears: a sharding the user put on it would be lost with it.
        if (product.Sharding is not null) return null;
        if (e.Inputs.Any(v => v.Type.DType != product.Type.DType)) return null;
        int k = e.Inputs[0].Type.ElementCount <= e.Inputs[1].Type.ElementCount ? 0 : 1;
        return e.Inputs[k].Type.ElementCount < product.Type.ElementCount ? (e, scale, k) : null;
    }

    /// <summary>Whether <paramref name="v"/> is ±2^k, normal in <paramref name="dtype"/>: multiplying by it is exact.</summary>
    private static bool IsPowerOfTwo(double v, DType dtype)
    {
        if (dtype is not (DType.F32 or DType.BF16) || v == 0 || !double.IsFinite(v)) return false;
        var f = (float)v;
        if ((double)f != v || !float.IsNormal(f)) return false;
        return (BitConverter.SingleToInt32Bits(f) & 0x7FFFFF) == 0;
    }
}
