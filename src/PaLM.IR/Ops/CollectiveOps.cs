using System.Collections.Immutable;
using static PaLM.IR.OpHelpers;

namespace PaLM.IR;

/// <summary>
/// The ops only the SPMD partitioner creates: collectives between the devices of a mesh-axis group and local slicing.
/// They live in per-device graphs, whose dims are local (<c>d_model/2</c>); <c>axes</c> names mesh axes, major first,
/// and the group of a device is every device that shares its coordinates on the other axes.
/// </summary>
internal static class CollectiveOps
{
    public static void Register(Action<OpDef> add)
    {
        add(Resize("all_gather", "AllGather", "concatenates the group's pieces along one dim", grows: true, Linearity.None));
        add(Resize("reduce_scatter", "ReduceScatter", "sums over the group and keeps this device's piece of one dim", grows: false, Linearity.None));
        add(Resize("shard_slice", "ShardSlice", "keeps this device's piece of one dim (no communication)", grows: false, Linearity.Unary));

        add(new OpDef
        {
            Name = "all_reduce",
            Doc = "sums over the group; every member gets the total",
            Signature = Sig(1, 1, Dims("axes")),
            Infer = c => One(c.Inputs[0]),
            Flops = n => Numel(n),
            Lower = c => new RtCall("AllReduce", new LDevice(), LArg.In(0), Axes(c)),
            Sharding = _ => ShardingRule.Collective,
            Vjp = Collective,
        });

        add(new OpDef
        {
            Name = "all_to_all",
            Doc = "re-splits: cuts dim 'split' into group-size pieces, sends piece j to member j, joins received pieces along 'concat'",
            Signature = Sig(1, 1, Dim("split"), Dim("split_to"), Dim("concat"), Dim("concat_to"), Dims("axes")),
            Infer = c =>
            {
                var t = c.Inputs[0];
                var (s, cc) = (c.AxisOf(0, "split"), c.AxisOf(0, "concat"));
                if (s == cc) throw InferContext.Fail("all_to_all: split and concat must be different dims");
                var (sTo, cTo) = (c.OneDim("split_to"), c.OneDim("concat_to"));
                Check(c, t.Dims[s], sTo, grows: false);
                Check(c, t.Dims[cc], cTo, grows: true);
                return One(t.WithDims(t.Dims.SetItem(s, sTo).SetItem(cc, cTo)));
            },
            Flops = _ => 0,
            Lower = c => new RtCall("AllToAll", new LDevice(), LArg.In(0), LArg.Lit(c.Axis(0, "split")), LArg.Lit(c.Axis(0, "concat")), Axes(c)),
            Sharding = _ => ShardingRule.Collective,
            Vjp = Collective,
        });
    }

    // Autodiff runs on the global graph; the partitioner then derives the backward's collectives like the forward's.
    private static readonly Func<VjpContext, IReadOnlyList<Value?>> Collective =
        Vjps.NotDifferentiable("autodiff runs on the global graph before partitioning, so collectives never reach it");

    private static OpDef Resize(string name, string method, string doc, bool grows, Linearity linearity) => new()
    {
        Name = name,
        Doc = doc,
        Signature = Sig(1, 1, Dim("along"), Dim("to"), Dims("axes")),
        Infer = c =>
        {
            var t = c.Inputs[0];
            var axis = c.AxisOf(0, "along");
            var to = c.OneDim("to");
            Check(c, t.Dims[axis], to, grows);
            return One(t.WithDims(t.Dims.SetItem(axis, to)));
        },
        Flops = n => name == "reduce_scatter" ? Numel(n) : 0,
        Lower = c => new RtCall(method, new LDevice(), LArg.In(0), LArg.Lit(c.Axis(0, "along")), Axes(c)),
        Sharding = _ => ShardingRule.Collective,
        Vjp = Collective,
        Linearity = linearity,
        IsView = name == "shard_slice",
    };

    private static void Check(InferContext c, Dim from, Dim to, bool grows)
    {
        var (small, big) = grows ? (from, to) : (to, from);
        if (small.Size <= 0 || big.Size % small.Size != 0)
            throw InferContext.Fail($"{c.Op.Name}: '{from.Name}' (size {from.Size}) cannot become '{to.Name}' (size {to.Size})");
    }

    private static LArg Axes(LowerContext c) => LArg.Lit(c.Node.Attr<DimsAttr>("axes").Names.ToArray());
}
