using PaLM.IR;

namespace PaLM.CodeGen;

/// <summary>
/// Fused loops that write a result straight into its slice of the concatenation that reads it, instead of into a buffer
/// of its own that the concatenation then copies: XLA's buffer assignment gives a concatenate's operands slices of its
/// output buffer the same way. The parallel-layer fusion pass joins activations along their last dim before each fused
/// projection (SwiGLU's output beside attention's in the forward, the two SwiGLU gradients beside the attention ones in
/// the backward), and most of each join's bytes come from one fused loop.
/// <para>
/// A loop result qualifies when a concatenation along the last dim in the same block is its one reader (directly or
/// through reshapes that keep its shape, each with that one reader), besides being a loop body's result (saved by a
/// layer loop, as a view of the join; such a saved view stays intact only because nothing writes a join in place:
/// concat is not a fresh-buffer op for buffer donation, see its OpDef). The join is allocated where the first such loop
/// runs; the concatenation then copies only the pieces that are not already in place (<c>Rt.ConcatInto</c>).
/// </para>
/// </summary>
public sealed class ConcatDestinations
{
    /// <summary>Where a loop result goes: <paramref name="Length"/> entries from <paramref name="Offset"/> along
    /// <paramref name="Axis"/> of <paramref name="Concat"/>'s result.</summary>
    public sealed record Piece(Node Concat, long Axis, long Offset, long Length);

    public static ConcatDestinations None { get; } = new();

    private readonly Dictionary<Value, Piece> _pieces = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<Node> _concats = new(ReferenceEqualityComparer.Instance);

    private ConcatDestinations() { }

    public ConcatDestinations(Graph g, FusionPlan fusion)
    {
        var readers = GraphReaders.Of(g);
        // A view nothing reads (left behind by a pass that reused an equal value) does not count as a reader.
        bool Dead(Node? n) => n is { Op.IsView: true } && n.Outputs.All(o => !readers.ContainsKey(o));
        // A loop body's result (a value a layer loop saves for the backward) may live on as a view of the join: not
        // counted. The graph's own results are: a caller gets dense tensors of their own.
        var outputs = new HashSet<Value>(g.Body.Results, ReferenceEqualityComparer.Instance);
        var uses = new Dictionary<Value, int>(ReferenceEqualityComparer.Instance);
        foreach (var (v, list) in readers) uses[v] = list.Count(u => u.User is not null && !Dead(u.User)) + (outputs.Contains(v) ? 1 : 0);
        Visit(g.Body, fusion, uses);
    }

    /// <summary>The slice of a concatenation loop result <paramref name="v"/> is written into, if any.</summary>
    public Piece? Of(Value v) => _pieces.GetValueOrDefault(v);

    /// <summary>Whether some operand of <paramref name="concat"/> is written in place by its loop.</summary>
    public bool HasPieces(Node concat) => _concats.Contains(concat);

    private void Visit(Block block, FusionPlan fusion, Dictionary<Value, int> uses)
    {
        var producers = new Dictionary<Value, Node>(ReferenceEqualityComparer.Instance);
        foreach (var n in block.Nodes)
        {
            foreach (var r in n.Regions) Visit(r, fusion, uses);
            foreach (var o in n.Outputs) producers[o] = n;
            if (n.Op.Name != "concat" || n.Outputs[0].Type.DType != DType.F32) continue;
            var axis = n.Inputs[0].Type.Rank - 1;
            if (n.Inputs[0].Type.Dims[axis].Name != n.Attr<DimsAttr>("along").Names[0]) continue;
            long offset = 0;
            foreach (var operand in n.Inputs)
            {
                var length = operand.Type.Shape[axis];
                var v = operand;
                while (uses.GetValueOrDefault(v) == 1 && producers.TryGetValue(v, out var p) && p.Op.Name == "reshape"
                       && p.Inputs[0].Type.Shape.SequenceEqual(v.Type.Shape))
                    v = p.Inputs[0];
                if (uses.GetValueOrDefault(v) == 1 && producers.TryGetValue(v, out var producer) && fusion.GroupOf(producer) is { } group
                    && group.Outputs.Contains(v) && v.Type.Shape.SequenceEqual(operand.Type.Shape))
                {
                    _pieces[v] = new Piece(n, axis, offset, length);
                    _concats.Add(n);
                }
                offset += length;
            }
        }
    }
}
