using System.Collections.Immutable;
using static PaLM.IR.OpHelpers;

namespace PaLM.IR;

/// <summary>Reductions over named dims, and the normalizers over one dim (softmax, logsumexp).</summary>
internal static class ReductionOps
{
    public static void Register(Action<OpDef> add)
    {
        foreach (var (name, method) in new[] { ("sum", "Sum"), ("mean", "Mean"), ("max", "Max") })
            add(new OpDef
            {
                Name = name,
                Doc = $"{name} over the named dims, which disappear from the result",
                Signature = Sig(1, 1, Dims("over")),
                Infer = c => One(Reduced(c, c.DimNames("over"))),
                Flops = n => Numel(n),
                Lower = c => new RtCall(method, LArg.In(0),
                    LArg.Lit(c.Node.Attr<DimsAttr>("over").Names.Select(d => (long)c.In(0).IndexOf(d)).ToArray())),
                // sum and mean over a split dim leave partial sums (mean's scaled by 1/shards); max needs the dim whole.
                Sharding = n => name == "max" ? ShardingRule.ByName(n, n.Attr<DimsAttr>("over").Names) : ShardingRule.ByName(n, mean: name == "mean"),
                Linearity = name == "max" ? Linearity.None : Linearity.Unary,
                Vjp = c =>
                {
                    if (!c.Wants(0) || c.Dy() is not { } dy) return Vjps.None(c);
                    var x = c.Node.Inputs[0].Type;
                    if (name == "sum") return [c.BroadcastTo(dy, x)];
                    if (name == "mean")
                    {
                        var count = c.Node.Attr<DimsAttr>("over").Names.Aggregate(1L, (a, d) => a * x.Dims[x.IndexOf(d)].Size);
                        return [c.BroadcastTo(c.Op("mul", [dy, c.Const(1.0 / count, x.DType)]), x)];
                    }
                    // max: to the positions that hold the maximum (every one of them on a tie, as JAX does).
                    return [c.Op("mul", [c.Op("step", [c.Op("sub", [c.X(0), c.Y()])]), c.BroadcastTo(dy, x)])];
                },
            });

        add(new OpDef
        {
            Name = "softmax",
            Doc = "softmax over one dim",
            Signature = Sig(1, 1, Dim("over")),
            Infer = c =>
            {
                c.RequireFloat(0);
                c.AxisOf(0, "over");
                return One(c.Inputs[0]);
            },
            Flops = n => 5 * Numel(n), // max, subtract, exp, sum, divide
            Lower = c => new RtCall("Softmax", LArg.In(0), LArg.Lit(c.Axis(0, "over"))),
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("over").Names),
            Vjp = c => [c.Wants(0) && c.Dy() is { } dy ? c.Op("softmax_grad", [dy, c.Y()], ("over", c.Attr<DimsAttr>("over"))) : null],
        });

        add(new OpDef
        {
            Name = "softmax_grad",
            Doc = "softmax's VJP: y * (dy - sum(dy * y, over)), y the softmax's result, in one pass over each row",
            Signature = Sig(2, 2, Dim("over")),
            Infer = c =>
            {
                c.RequireFloat(0);
                c.SameDType("operand");
                if (!c.Inputs[0].Equals(c.Inputs[1])) throw InferContext.Fail($"softmax_grad: dy {c.Inputs[0]} and y {c.Inputs[1]} differ");
                c.AxisOf(0, "over");
                return One(c.Inputs[0]);
            },
            Flops = n => 4 * Numel(n),                        // multiply, sum, subtract, multiply
            Lower = c => new RtCall("SoftmaxGrad", LArg.In(0), LArg.In(1), LArg.Lit(c.Axis(0, "over"))),
            FreshBuffer = true,
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("over").Names),
            // Linear in dy: a pending sum of dy may flow through (y, the softmax, is never partial).
            Linearity = Linearity.Numerator,
            Vjp = Vjps.NotDifferentiable("palmc takes first derivatives only"),
        });

        // Sums and means of squares: sum(square(x)) without the squared temporary. The optimizer reads every
        // parameter-sized tensor this way (gradient norm, Adafactor's RMS terms); PaLM.Passes.SquareReductions fuses them.
        foreach (var (name, method, mean) in new[] { ("sum_squares", "SumSquares", false), ("mean_squares", "MeanSquares", true) })
            add(new OpDef
            {
                Name = name,
                Doc = $"{(mean ? "mean" : "sum")} of x² over the named dims, which disappear from the result",
                Signature = Sig(1, 1, Dims("over")),
                Infer = c =>
                {
                    c.RequireFloat(0);
                    return One(Reduced(c, c.DimNames("over")));
                },
                Flops = n => 2 * Numel(n),
                Lower = c => new RtCall(method, LArg.In(0),
                    LArg.Lit(c.Node.Attr<DimsAttr>("over").Names.Select(d => (long)c.In(0).IndexOf(d)).ToArray())),
                FreshBuffer = true,
                // Over a split dim each device holds a partial sum of its squares (a mean's scaled by 1/shards), as for sum.
                Sharding = n => ShardingRule.ByName(n, mean: mean),
                Vjp = c =>
                {
                    if (!c.Wants(0) || c.Dy() is not { } dy) return Vjps.None(c);
                    var x = c.Node.Inputs[0].Type;
                    var count = mean ? c.Node.Attr<DimsAttr>("over").Names.Aggregate(1L, (a, d) => a * x.Dims[x.IndexOf(d)].Size) : 1;
                    return [c.Op("mul", [c.X(0), c.BroadcastTo(c.Op("mul", [dy, c.Const(2.0 / count, x.DType)]), x)])];
                },
            });

        add(new OpDef
        {
            Name = "logsumexp",
            Doc = "log(sum(exp(x))) over one dim, which disappears",
            Signature = Sig(1, 1, Dim("over")),
            Infer = c =>
            {
                c.RequireFloat(0);
                return One(Reduced(c, c.DimNames("over")));
            },
            Flops = n => 4 * Numel(n), // max, subtract, exp, sum (+ one log per row)
            Lower = c => new RtCall("LogSumExp", LArg.In(0), LArg.Lit(c.Axis(0, "over"))),
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("over").Names),
            // dx = softmax(x) * dy, dy broadcast over the reduced dim
            Vjp = c => [c.Wants(0) && c.Dy() is { } dy
                ? c.Op("mul", [c.Op("softmax", [c.X(0)], ("over", c.Attr<DimsAttr>("over"))), dy])
                : null],
        });
    }

    /// <summary>Operand 0's type without the given dims (each must be one of its dims, named once).</summary>
    public static TensorType Reduced(InferContext c, ImmutableArray<string> over)
    {
        var t = c.Inputs[0];
        if (over.IsEmpty) throw InferContext.Fail($"{c.Op.Name}: 'over' names no dim");
        foreach (var d in over)
        {
            if (!t.Has(d)) throw InferContext.Fail($"{c.Op.Name}: dim '{d}' is not a dim of {t}");
            if (over.Count(x => x == d) > 1) throw InferContext.Fail($"{c.Op.Name}: dim '{d}' named twice");
        }
        return t.WithDims(t.Dims.Where(d => !over.Contains(d.Name)));
    }
}
