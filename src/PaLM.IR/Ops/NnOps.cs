using System.Collections.Immutable;
using static PaLM.IR.OpHelpers;

namespace PaLM.IR;

/// <summary>The neural-network ops PaLM needs: layer norm, RoPE, causal mask, embedding gather, cross-entropy with z-loss.</summary>
internal static class NnOps
{
    private static bool Inverse(Node n) => n.Attrs.TryGetValue("inverse", out var a) && a is IntAttr { Value: not 0 };

    private static double Fill(Node n) => n.Attrs.TryGetValue("fill", out var a) && a is FloatAttr f ? f.Value : double.NegativeInfinity;

    public static void Register(Action<OpDef> add)
    {
        add(new OpDef
        {
            Name = "layernorm",
            Doc = "layer norm over the last dim with a scale and no bias (PaLM): (x - mean) / sqrt(var + eps) * scale",
            Signature = Sig(2, 2, Dim("over"), Float("eps", 1e-6)),
            Infer = c =>
            {
                c.RequireFloat(0);
                c.SameDType("x and scale");
                var (x, scale) = (c.Inputs[0], c.Inputs[1]);
                var axis = c.AxisOf(0, "over");
                if (axis != x.Rank - 1)
                    throw InferContext.Fail($"layernorm: 'over' must be the last dim of {x}, got '{x.Dims[axis].Name}'");
                if (scale.Rank != 1 || scale.Dims[0] != x.Dims[axis])
                    throw InferContext.Fail($"layernorm: scale must be [{x.Dims[axis].Name}], got {scale}");
                return One(x);
            },
            Flops = n => 7 * Numel(n), // mean, subtract, square, mean, rsqrt-multiply, scale
            Lower = c => new RtCall("LayerNorm", LArg.In(0), LArg.In(1), LArg.Lit(c.Node.Attr<FloatAttr>("eps").Value)),
            FreshBuffer = true,
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("over").Names),
            Vjp = c =>
            {
                if (c.Dy() is not { } dy) return Vjps.None(c);
                var attrs = new[] { ("over", (Attr)c.Attr<DimsAttr>("over")), ("eps", c.Attr<FloatAttr>("eps")) };
                return [c.Wants(0) ? c.Op("layernorm_dx", [dy, c.X(0), c.X(1)], attrs) : null,
                        c.Wants(1) ? c.Op("layernorm_dscale", [dy, c.X(0)], attrs) : null];
            },
        });

        add(new OpDef
        {
            Name = "layernorm_dx",
            Doc = "layernorm's input cotangent: rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * scale",
            Signature = Sig(3, 3, Dim("over"), Float("eps", 1e-6)),
            Infer = c =>
            {
                c.RequireFloat(0);
                c.SameDType("operand");
                var (dy, x, scale) = (c.Inputs[0], c.Inputs[1], c.Inputs[2]);
                var axis = c.AxisOf(1, "over");
                if (!dy.Equals(x) || axis != x.Rank - 1 || scale.Rank != 1 || scale.Dims[0] != x.Dims[axis])
                    throw InferContext.Fail($"layernorm_dx: expects dy and x of one type normalized over their last dim and a scale of that dim, got {dy}, {x}, {scale}");
                return One(x);
            },
            Flops = n => 12 * Numel(n),
            Lower = c => new RtCall("LayerNormDx", LArg.In(0), LArg.In(1), LArg.In(2), LArg.Lit(c.Node.Attr<FloatAttr>("eps").Value)),
            // A new buffer from the row kernel and the composite form alike: the residual stream's cotangent adds into it.
            FreshBuffer = true,
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("over").Names),
            Linearity = Linearity.Numerator,
            Vjp = Vjps.NotDifferentiable("palmc takes first derivatives only"),
        });

        add(new OpDef
        {
            Name = "layernorm_dscale",
            Doc = "layernorm's scale cotangent: the sum of dy * xhat over every dim but 'over'",
            Signature = Sig(2, 2, Dim("over"), Float("eps", 1e-6)),
            Infer = c =>
            {
                c.RequireFloat(0);
                c.SameDType("operand");
                var axis = c.AxisOf(1, "over");
                if (!c.Inputs[0].Equals(c.Inputs[1]) || axis != c.Inputs[1].Rank - 1)
                    throw InferContext.Fail($"layernorm_dscale: expects dy and x of one type normalized over their last dim, got {c.Inputs[0]}, {c.Inputs[1]}");
                return One(new TensorType(c.Inputs[1].DType, c.Inputs[1].Dims[axis]));
            },
            Flops = n => 9 * Numel(n),
            Lower = c => new RtCall("LayerNormDScale", LArg.In(0), LArg.In(1), LArg.Lit(c.Node.Attr<FloatAttr>("eps").Value)),
            // Normalizing needs 'over' whole; the other dims are summed away (partial sums when split).
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("over").Names),
            Linearity = Linearity.Numerator,
            Vjp = Vjps.NotDifferentiable("palmc takes first derivatives only"),
        });

        add(new OpDef
        {
            Name = "rope",
            Doc = "rotary position embedding: rotates feature pairs by angles growing with the position along seq",
            Signature = Sig(1, 1, Dim("seq"), Dim("feature"), new AttrSpec("inverse", AttrKind.Int, new IntAttr(0))),
            Infer = c =>
            {
                c.RequireFloat(0);
                var s = c.AxisOf(0, "seq");
                var f = c.AxisOf(0, "feature");
                if (s == f) throw InferContext.Fail("rope: seq and feature must be different dims");
                if (c.Inputs[0].Dims[f].Size % 2 != 0)
                    throw InferContext.Fail($"rope: feature dim '{c.Inputs[0].Dims[f].Name}' must have even size, got {c.Inputs[0].Dims[f].Size}");
                return One(c.Inputs[0]);
            },
            Flops = n => 3 * Numel(n), // x*cos + rotate(x)*sin
            Lower = c => new RtCall("Rope", LArg.In(0), LArg.Lit(c.Axis(0, "seq")), LArg.Lit(c.Axis(0, "feature")), LArg.Lit(Inverse(c.Node) ? 1L : 0L)),
            FreshBuffer = true,
            // Angles depend on the global position and feature pairs span the feature dim: both stay whole.
            Sharding = n => ShardingRule.ByName(n, [.. n.Attr<DimsAttr>("seq").Names, .. n.Attr<DimsAttr>("feature").Names]),
            Linearity = Linearity.Unary,
            // A rotation's transpose is the rotation by the opposite angles.
            Vjp = c => [c.Wants(0) && c.Dy() is { } dy
                ? c.Op("rope", [dy], ("seq", c.Attr<DimsAttr>("seq")), ("feature", c.Attr<DimsAttr>("feature")), ("inverse", new IntAttr(Inverse(c.Node) ? 0 : 1)))
                : null],
        });

        add(new OpDef
        {
            Name = "causal_mask",
            Doc = "sets positions where key > query to -inf",
            Signature = Sig(1, 1, Dim("query"), Dim("key"), Float("fill", double.NegativeInfinity)),
            Infer = c =>
            {
                c.RequireFloat(0);
                var q = c.AxisOf(0, "query");
                var k = c.AxisOf(0, "key");
                if (q == k) throw InferContext.Fail("causal_mask: query and key must be different dims");
                return One(c.Inputs[0]);
            },
            Flops = n => Numel(n),
            Lower = c => new RtCall("CausalMask", LArg.In(0), LArg.Lit(c.Axis(0, "query")), LArg.Lit(c.Axis(0, "key")), LArg.Lit(Fill(c.Node))),
            InPlace = "CausalMaskInPlace",
            Sharding = n => ShardingRule.ByName(n, [.. n.Attr<DimsAttr>("query").Names, .. n.Attr<DimsAttr>("key").Names]),
            // Masked positions are constants: their cotangent is dropped (filled with 0). When the result is a -inf mask
            // read only by softmax over the key dim, the cotangent arrives already 0 there: softmax's VJP is
            // p·(g − Σ p·g) and p is exactly 0 at -inf logits, so the second mask would copy the tensor for nothing
            // (47 ms a step on palm-cpu).
            Vjp = c =>
            {
                if (!c.Wants(0) || c.Dy() is not { } dy) return [null];
                if (double.IsNegativeInfinity(Fill(c.Node)) && c.Readers() is { Count: > 0 } readers
                    && readers.All(r => r.Op.Name == "softmax" && r.Attr<DimsAttr>("over").Names.SequenceEqual(c.Attr<DimsAttr>("key").Names)))
                    return [dy];
                return [c.Op("causal_mask", [dy], ("query", c.Attr<DimsAttr>("query")), ("key", c.Attr<DimsAttr>("key")), ("fill", new FloatAttr(0)))];
            },
        });

        add(new OpDef
        {
            Name = "causal_softmax",
            Doc = "softmax over key of causal_mask(x, query, key): each query's keys up to itself; later keys get probability 0",
            Signature = Sig(1, 1, Dim("query"), Dim("key")),
            Infer = c =>
            {
                c.RequireFloat(0);
                if (c.AxisOf(0, "query") == c.AxisOf(0, "key")) throw InferContext.Fail("causal_softmax: query and key must be different dims");
                return One(c.Inputs[0]);
            },
            Flops = n => 5 * Numel(n) / 2,                    // softmax's 5 per element, over the unmasked half
            Lower = c => new RtCall("CausalSoftmax", LArg.In(0), LArg.Lit(c.Axis(0, "query")), LArg.Lit(c.Axis(0, "key"))),
            FreshBuffer = true,
            Sharding = n => ShardingRule.ByName(n, [.. n.Attr<DimsAttr>("query").Names, .. n.Attr<DimsAttr>("key").Names]),
            // Made from softmax(causal_mask(x)) after autodiff (PaLM.Passes.CausalSoftmax), whose VJPs are already taken.
            Vjp = Vjps.NotDifferentiable("causal_softmax is formed after autodiff; differentiate softmax(causal_mask(x)) instead"),
        });

        add(new OpDef
        {
            Name = "gather",
            Doc = "embedding lookup: gather(table, ids, along=vocab) replaces table's 'along' dim by the dims of ids",
            Signature = Sig(2, 2, Dim("along")),
            Infer = c =>
            {
                var (table, ids) = (c.Inputs[0], c.Inputs[1]);
                if (ids.DType != DType.I32) throw InferContext.Fail($"gather: indices must be i32, got {ids}");
                var axis = c.AxisOf(0, "along");
                var dims = table.Dims.Take(axis).Concat(ids.Dims).Concat(table.Dims.Skip(axis + 1)).ToList();
                var dup = dims.GroupBy(d => d.Name).FirstOrDefault(g => g.Count() > 1);
                if (dup is not null) throw InferContext.Fail($"gather: dim '{dup.Key}' would occur twice in the result");
                return One(table.WithDims(dims));
            },
            Flops = _ => 0,
            Lower = c => new RtCall("Gather", LArg.In(0), LArg.In(1), LArg.Lit(c.Axis(0, "along"))),
            // Ids index the whole table dim, so it stays whole; the table's other dims and the ids' dims pass through.
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("along").Names),
            Vjp = c => [c.Wants(0) && c.Dy() is { } dy
                ? c.Op("scatter_add", [dy, c.X(1)], ("along", c.Attr<DimsAttr>("along")), ("to", new DimsAttr([.. c.Node.Inputs[0].Type.Dims.Select(d => d.Name)])))
                : null, null],
        });

        add(new OpDef
        {
            Name = "scatter_add",
            Doc = "gather's transpose: a zero tensor with dims 'to' into which each row of dy is added at its id along 'along'",
            Signature = Sig(2, 2, Dim("along"), Dims("to")),
            Infer = c =>
            {
                var (dy, ids) = (c.Inputs[0], c.Inputs[1]);
                c.RequireFloat(0);
                if (ids.DType != DType.I32) throw InferContext.Fail($"scatter_add: indices must be i32, got {ids}");
                var to = c.DimNames("to").Select(c.Dim).ToImmutableArray();
                var along = c.OneDim("along");
                var axis = to.IndexOf(along);
                if (axis < 0) throw InferContext.Fail($"scatter_add: '{along.Name}' is not one of the result dims [{string.Join(", ", to)}]");
                var expect = to.Take(axis).Concat(ids.Dims).Concat(to.Skip(axis + 1));
                if (!dy.Dims.SequenceEqual(expect))
                    throw InferContext.Fail($"scatter_add: dy {dy} must have the dims [{string.Join(", ", expect)}]");
                return One(new TensorType(dy.DType, to));
            },
            Flops = n => Numel(n),
            Lower = c => new RtCall("ScatterAdd", LArg.In(0), LArg.In(1), LArg.Lit((long)c.Out().IndexOf(c.Node.Attr<DimsAttr>("along").Names[0])), LArg.Lit(c.Out().Shape)),
            // Every id may land anywhere in 'along', so it stays whole; the ids' dims are summed away (partial sums when split).
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("along").Names),
            Linearity = Linearity.Numerator,
            Vjp = Vjps.NotDifferentiable("palmc takes first derivatives only"),
        });

        add(new OpDef
        {
            Name = "cross_entropy",
            Doc = "softmax cross-entropy per position plus z_loss * log(Z)^2; targets have the logits' dims without 'over'",
            Signature = Sig(2, 2, Dim("over"), Float("z_loss", 0.0)),
            Infer = c =>
            {
                var (logits, targets) = (c.Inputs[0], c.Inputs[1]);
                c.RequireFloat(0);
                if (targets.DType != DType.I32) throw InferContext.Fail($"cross_entropy: targets must be i32, got {targets}");
                var axis = c.AxisOf(0, "over");
                var rest = logits.Dims.RemoveAt(axis);
                if (!rest.SequenceEqual(targets.Dims))
                    throw InferContext.Fail($"cross_entropy: targets {targets} must have the dims of logits {logits} without '{logits.Dims[axis].Name}'");
                return One(new TensorType(logits.DType, rest));
            },
            Flops = n => 5 * Numel(n), // logsumexp (4) + picking the target and the z-loss term
            Lower = c => new RtCall("CrossEntropy", LArg.In(0), LArg.In(1), LArg.Lit(c.Axis(0, "over")), LArg.Lit(c.Node.Attr<FloatAttr>("z_loss").Value)),
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("over").Names),
            Vjp = c => [c.Wants(0) && c.Dy() is { } dy
                ? c.Op("cross_entropy_grad", [dy, c.X(0), c.X(1)], ("over", c.Attr<DimsAttr>("over")), ("z_loss", c.Attr<FloatAttr>("z_loss")))
                : null, null],
        });

        add(new OpDef
        {
            Name = "cross_entropy_grad",
            Doc = "cross_entropy's logits cotangent: dy * (softmax(x) * (1 + 2 z_loss lse) - onehot(target))",
            Signature = Sig(3, 3, Dim("over"), Float("z_loss", 0.0)),
            Infer = c =>
            {
                var (dy, logits, targets) = (c.Inputs[0], c.Inputs[1], c.Inputs[2]);
                c.RequireFloat(1);
                var axis = c.AxisOf(1, "over");
                if (targets.DType != DType.I32 || !targets.Dims.SequenceEqual(logits.Dims.RemoveAt(axis)) || !dy.Equals(logits.WithDims(targets.Dims)))
                    throw InferContext.Fail($"cross_entropy_grad: expects dy and i32 targets with the dims of logits {logits} without '{logits.Dims[axis].Name}', got {dy}, {targets}");
                return One(logits);
            },
            Flops = n => 6 * Numel(n, 1),
            Lower = c => new RtCall("CrossEntropyGrad", LArg.In(0), LArg.In(1), LArg.In(2), LArg.Lit(c.Axis(1, "over")), LArg.Lit(c.Node.Attr<FloatAttr>("z_loss").Value)),
            FreshBuffer = true,     // the row kernel's and the composite's result are new buffers
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("over").Names),
            Linearity = Linearity.Numerator,
            Vjp = Vjps.NotDifferentiable("palmc takes first derivatives only"),
        });
    }
}
