using System.Collections.Immutable;
using static PaLM.IR.OpHelpers;

namespace PaLM.IR;

/// <summary>The neural-network ops PaLM needs: layer norm, RoPE, causal mask, embedding gather, cross-entropy with z-loss.</summary>
internal static class NnOps
{
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
            Sharding = n => ShardingRule.ByName(n, n.Attr<DimsAttr>("over").Names),
        });

        add(new OpDef
        {
            Name = "rope",
            Doc = "rotary position embedding: rotates feature pairs by angles growing with the position along seq",
            Signature = Sig(1, 1, Dim("seq"), Dim("feature")),
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
            Lower = c => new RtCall("Rope", LArg.In(0), LArg.Lit(c.Axis(0, "seq")), LArg.Lit(c.Axis(0, "feature"))),
            // Angles depend on the global position and feature pairs span the feature dim: both stay whole.
            Sharding = n => ShardingRule.ByName(n, [.. n.Attr<DimsAttr>("seq").Names, .. n.Attr<DimsAttr>("feature").Names]),
        });

        add(new OpDef
        {
            Name = "causal_mask",
            Doc = "sets positions where key > query to -inf",
            Signature = Sig(1, 1, Dim("query"), Dim("key")),
            Infer = c =>
            {
                c.RequireFloat(0);
                var q = c.AxisOf(0, "query");
                var k = c.AxisOf(0, "key");
                if (q == k) throw InferContext.Fail("causal_mask: query and key must be different dims");
                return One(c.Inputs[0]);
            },
            Flops = n => Numel(n),
            Lower = c => new RtCall("CausalMask", LArg.In(0), LArg.Lit(c.Axis(0, "query")), LArg.Lit(c.Axis(0, "key"))),
            Sharding = n => ShardingRule.ByName(n, [.. n.Attr<DimsAttr>("query").Names, .. n.Attr<DimsAttr>("key").Names]),
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
        });
    }
}
