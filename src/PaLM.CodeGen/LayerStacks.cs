using PaLM.IR;

namespace PaLM.CodeGen;

/// <summary>
/// Which per-layer results of a <c>repeat</c> are kept as one tensor per layer (<c>PaLM.Runtime.LayerStack</c>) instead
/// of being copied into a stacked buffer every iteration. A training step's forward loop saves a dozen activations a
/// layer for the backward loop (the SwiGLU halves, the attention probabilities: about 180 MB a layer for palm-cpu);
/// copying them cost a pass over all of that memory per step, and nothing but the backward loop, one layer at a time,
/// ever reads them.
/// <para>
/// A result is kept per layer when every reader is a <c>repeat</c> slicing it as a stacked operand (and it is no
/// block's result): no op ever sees it as one tensor. With a single such reader, that loop takes each layer (the
/// stack lets go of it), so its buffer is freed as soon as the backward layer that read it is done.
/// </para>
/// <para>
/// The iteration's value is kept without a copy only when the iteration owns its buffer: it is made in the loop body by
/// an op returning a fresh buffer (or a view of one, or the loop's own buffer donated to it), so nothing outside the
/// iteration can see or write it. A value that is, or views, a loop operand (a carried input, a parameter slice) or
/// comes from an op that may return its operand is copied, as before.
/// </para>
/// </summary>
public sealed class LayerStacks
{
    private readonly HashSet<Value> _stacks = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<Value> _takenOnRead = new(ReferenceEqualityComparer.Instance);
    private readonly IReadOnlyDictionary<Node, int> _inPlace;
    private readonly FusionPlan _fusion;
    private readonly IReadOnlyDictionary<FusionGroup, int[]> _loopDonors;

    /// <summary>No result kept per layer: every stacked result is copied into its buffer.</summary>
    public static LayerStacks None { get; } = new();

    private LayerStacks() => (_fusion, _inPlace, _loopDonors) = (FusionPlan.None, new Dictionary<Node, int>(), new Dictionary<FusionGroup, int[]>());

    public LayerStacks(Graph g, FusionPlan fusion, IReadOnlyDictionary<Node, int> inPlace, IReadOnlyDictionary<FusionGroup, int[]> loopDonors)
    {
        (_fusion, _inPlace, _loopDonors) = (fusion, inPlace, loopDonors);
        var uses = GraphReaders.Of(g);

        void Find(Block b)
        {
            foreach (var n in b.Nodes)
            {
                foreach (var r in n.Regions) Find(r);
                if (!n.Op.HasRegion || n.Op.Name != "repeat") continue;
                var carried = (int)n.Attr<IntAttr>("carried").Value;
                foreach (var o in n.Outputs.Skip(carried))
                {
                    var readers = uses.GetValueOrDefault(o) ?? [];
                    if (readers.Count == 0 || !readers.All(u => u.User is { } user && IsStackedOperand(user, u.Operand))) continue;
                    _stacks.Add(o);
                    if (readers.Count == 1) _takenOnRead.Add(o);
                }
            }
        }
        Find(g.Body);
    }

    /// <summary>Whether <paramref name="v"/> (a <c>repeat</c>'s stacked result) is kept as a LayerStack.</summary>
    public bool IsStack(Value v) => _stacks.Contains(v);

    /// <summary>Whether the one loop reading stack <paramref name="v"/> takes each layer from it (frees it after use).</summary>
    public bool IsTakenOnRead(Value v) => _takenOnRead.Contains(v);

    /// <summary>
    /// Whether <paramref name="v"/>, a result of loop body <paramref name="body"/>, is a buffer the iteration owns: made
    /// in the body by an op returning a fresh buffer, or a view of one, or such a buffer donated to an in-place op or a
    /// fused loop. Anything else (a body argument, a view of one, an op that may hand back its operand) is not.
    /// </summary>
    public bool OwnedByIteration(Value v, Block body)
    {
        var producers = new Dictionary<Value, Node>(ReferenceEqualityComparer.Instance);
        foreach (var n in body.Nodes)
            foreach (var o in n.Outputs) producers[o] = n;
        return Owned(v, producers, 0);
    }

    private bool Owned(Value v, Dictionary<Value, Node> producers, int depth)
    {
        if (depth > 64 || !producers.TryGetValue(v, out var p)) return false;
        if (_fusion.GroupOf(p) is { } group)
        {
            int j = group.Outputs.FindIndex(o => ReferenceEquals(o, v));
            if (j < 0 || !_loopDonors.TryGetValue(group, out var donors)) return j >= 0;
            return donors[j] < 0 || Owned(group.Inputs[donors[j]], producers, depth + 1);
        }
        if (p.Op.IsView) return Owned(p.Inputs[0], producers, depth + 1);
        if (_inPlace.TryGetValue(p, out var k)) return Owned(p.Inputs[k], producers, depth + 1);
        return BufferReuse.FreshResult(p);
    }

    private static bool IsStackedOperand(Node user, int operand)
    {
        if (!user.Op.HasRegion || user.Op.Name != "repeat") return false;
        var carried = (int)user.Attr<IntAttr>("carried").Value;
        var stacked = (int)user.Attr<IntAttr>("stacked").Value;
        return operand >= carried && operand < carried + stacked;
    }
}
