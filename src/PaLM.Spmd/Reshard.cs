using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Spmd;

/// <summary>The kinds of step a reshard is made of (collectives, and the free local slice).</summary>
public enum CollectiveKind { AllReduce, ReduceScatter, AllGather, AllToAll, ShardSlice }

/// <summary>Names of each step kind: the op-table op that performs it, and how plans print it.</summary>
public static class CollectiveKinds
{
    public static string OpName(this CollectiveKind k) => k switch
    {
        CollectiveKind.AllReduce => "all_reduce",
        CollectiveKind.ReduceScatter => "reduce_scatter",
        CollectiveKind.AllGather => "all_gather",
        CollectiveKind.AllToAll => "all_to_all",
        _ => "shard_slice",
    };

    /// <summary><c>all-gather</c>, <c>reduce-scatter</c>, ...</summary>
    public static string DisplayName(this CollectiveKind k) => k.OpName().Replace('_', '-');
}

/// <summary>
/// One step of a reshard on a tensor: <see cref="Dim"/> is the dim it gathers, scatters or slices (the concat dim of an
/// all-to-all, whose split dim is <see cref="SplitDim"/>); <see cref="Bytes"/> is what each device sends;
/// <see cref="After"/> is the tensor's layout once the step has run.
/// </summary>
public sealed record ReshardStep(CollectiveKind Kind, ImmutableArray<string> Axes, int Dim, int SplitDim, long Bytes)
{
    public Sharding After { get; init; } = null!;

    /// <summary>The layout <paramref name="before"/> becomes under this step (the one statement of each step's meaning).</summary>
    public Sharding Apply(Sharding before)
    {
        var dims = before.DimAxes.ToArray();
        var partial = before.Partial;
        switch (Kind)
        {
            case CollectiveKind.AllReduce:
                partial = partial.RemoveAll(Axes.Contains);
                break;
            case CollectiveKind.ReduceScatter:
                partial = partial.RemoveAll(Axes.Contains);
                dims[Dim] = dims[Dim].AddRange(Axes);
                break;
            case CollectiveKind.AllGather:
                dims[Dim] = dims[Dim].RemoveRange(dims[Dim].Length - Axes.Length, Axes.Length);
                break;
            case CollectiveKind.ShardSlice:
                dims[Dim] = dims[Dim].AddRange(Axes);
                break;
            case CollectiveKind.AllToAll:
                dims[Dim] = dims[Dim].RemoveAt(dims[Dim].Length - 1);
                dims[SplitDim] = dims[SplitDim].AddRange(Axes);
                break;
        }
        return new Sharding([.. dims], partial);
    }
}

/// <summary>
/// The one way palmc changes a tensor's layout: from a sharding (with partial axes) to another, as a short list of
/// steps. Pending sums are reduced first (reduce-scatter onto a dim the target splits over that axis, then
/// all-reduce of the rest on the scattered piece); then dims that lose axes are all-gathered (minor axes first), dims that gain axes are sliced locally,
/// and a gather and a slice over the same single axis become one all-to-all. Propagation prices candidate layouts
/// with the same function the partitioner uses to emit them, so the cost model and the program agree.
/// </summary>
public static class Reshard
{
    /// <summary>
    /// Steps taking a tensor of global type <paramref name="type"/> from <paramref name="from"/> to
    /// <paramref name="to"/>; <paramref name="keepPartial"/> keeps pending sums that <paramref name="to"/> allows (the
    /// consumer is linear in this operand) instead of reducing them.
    /// </summary>
    public static List<ReshardStep> Plan(TensorType type, Sharding from, Sharding to, Mesh mesh, bool keepPartial = false)
    {
        var steps = new List<ReshardStep>();
        var cur = from.DimAxes.Select(a => a.ToList()).ToArray();
        long local = LocalBytes(type, from, mesh);
        var targetAxes = to.AllAxes.ToHashSet();

        // 1. Pending sums. Kept ones must not be axes the target splits a dim over.
        var reduce = from.Partial.Where(p => !(keepPartial && !targetAxes.Contains(p) && to.Partial.Contains(p))).ToList();
        // Reduce-scatter every pending axis the target splits a dim over next (in the dim's axis order, so a dim split
        // over (data, model) takes one reduce-scatter over both), then all-reduce what is left on the smaller piece:
        // a gradient pending over (pod, data) and split over data crosses pods at 1/|data| of its size, as PaLM's did.
        var pending = reduce.ToList();
        var scatter = new List<(int Dim, List<string> Axes)>();
        var grown = cur.Select(c => c.Count).ToArray();
        for (bool progress = true; progress;)
        {
            progress = false;
            for (int i = 0; i < cur.Length; i++)
            {
                while (to.DimAxes[i].Length > grown[i] && IsPrefix(cur[i], to.DimAxes[i]) && pending.Contains(to.DimAxes[i][grown[i]]))
                {
                    var axis = to.DimAxes[i][grown[i]++];
                    pending.Remove(axis);
                    if (scatter.Count > 0 && scatter[^1].Dim == i) scatter[^1].Axes.Add(axis);
                    else scatter.Add((i, [axis]));
                    progress = true;
                }
            }
        }
        foreach (var (d, axes) in scatter)
        {
            var k = mesh.Product(axes);
            steps.Add(new ReshardStep(CollectiveKind.ReduceScatter, [.. axes], d, -1, local * (k - 1) / k));
            cur[d].AddRange(axes);
            local /= k;
        }
        if (pending.Count > 0)
        {
            var k = mesh.Product(pending);
            steps.Add(new ReshardStep(CollectiveKind.AllReduce, [.. pending], -1, -1, 2 * local * (k - 1) / k));
        }

        // 2. Gathers: each dim keeps its longest prefix shared with the target.
        var gathers = new List<(int Dim, List<string> Axes)>();
        for (int i = 0; i < cur.Length; i++)
        {
            var keep = CommonPrefix(cur[i], to.DimAxes[i]);
            if (keep < cur[i].Count)
            {
                gathers.Add((i, cur[i].Skip(keep).ToList()));
                cur[i] = cur[i].Take(keep).ToList();
            }
        }
        // 3. Slices: each dim gains the rest of its target axes.
        var slices = new List<(int Dim, List<string> Axes)>();
        for (int i = 0; i < cur.Length; i++)
            if (to.DimAxes[i].Length > cur[i].Count)
                slices.Add((i, to.DimAxes[i].Skip(cur[i].Count).ToList()));

        // A gather and a slice over the same one axis are one all-to-all (data moves once, a 1/k share per peer).
        foreach (var g in gathers.ToList())
        {
            if (g.Axes.Count != 1) continue;
            var s = slices.FindIndex(x => x.Axes.Count == 1 && x.Axes[0] == g.Axes[0] && x.Dim != g.Dim && !gathers.Any(y => y.Dim == x.Dim));
            if (s < 0) continue;
            var k = mesh.SizeOf(g.Axes[0]);
            steps.Add(new ReshardStep(CollectiveKind.AllToAll, [g.Axes[0]], g.Dim, slices[s].Dim, local * (k - 1) / k));
            gathers.Remove(g);
            slices.RemoveAt(s);
        }
        foreach (var g in gathers)
        {
            var k = mesh.Product(g.Axes);
            steps.Add(new ReshardStep(CollectiveKind.AllGather, [.. g.Axes], g.Dim, -1, local * (k - 1)));
            local *= k;
        }
        foreach (var s in slices)
        {
            steps.Add(new ReshardStep(CollectiveKind.ShardSlice, [.. s.Axes], s.Dim, -1, 0));
            local /= mesh.Product(s.Axes);
        }
        var state = from;
        for (int i = 0; i < steps.Count; i++) steps[i] = steps[i] with { After = state = steps[i].Apply(state) };
        if (!state.Equals(to))
            throw new InvalidOperationException($"reshard of {type} reached {state.Format(type)}, not {to.Format(type)}");
        return steps;
    }

    /// <summary>Bytes each device sends to reshard (the price propagation and the partitioner minimize).</summary>
    public static long Cost(TensorType type, Sharding from, Sharding to, Mesh mesh, bool keepPartial = false) =>
        Plan(type, from, to, mesh, keepPartial).Sum(s => s.Bytes);

    /// <summary>Bytes of one device's piece of a tensor.</summary>
    public static long LocalBytes(TensorType type, Sharding s, Mesh mesh) => type.Bytes / mesh.Product(s.AllAxes);

    private static bool IsPrefix(List<string> a, ImmutableArray<string> b) => a.Count <= b.Length && a.SequenceEqual(b.Take(a.Count));

    private static int CommonPrefix(List<string> a, ImmutableArray<string> b)
    {
        int k = 0;
        while (k < a.Count && k < b.Length && a[k] == b[k]) k++;
        return k;
    }
}
