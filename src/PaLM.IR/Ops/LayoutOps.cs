using System.Collections.Immutable;
using static PaLM.IR.OpHelpers;

namespace PaLM.IR;

/// <summary>Ops that move data without arithmetic: reshape, transpose, split, concat.</summary>
internal static class LayoutOps
{
    public static void Register(Action<OpDef> add)
    {
        add(new OpDef
        {
            Name = "reshape",
            IsView = true,
            Doc = "reinterprets the elements (row-major) with new dims of the same total size",
            Signature = Sig(1, 1, Dims("to")),
            Infer = c =>
            {
                var to = NewDims(c, c.DimNames("to"), "reshape");
                var t = c.Inputs[0].WithDims(to);
                var (n, m) = (Elements(c.Inputs[0]), Elements(t));
                if (n != m)
                    throw InferContext.Fail($"reshape: {c.Inputs[0]} has {n} elements but [{string.Join(", ", to.Select(d => d.Name))}] has {m}");
                return One(t);
            },
            Flops = _ => 0,
            Lower = c => new RtCall("Reshape", LArg.In(0), LArg.Lit(c.Out().Shape)),
            // Dims kept by name pass through; dims that are merged or split must be whole.
            Sharding = n => ShardingRule.ByName(n, ShardingRule.OneSided(n)),
            Linearity = Linearity.Unary,
            Vjp = c => [c.Wants(0) && c.Dy() is { } dy ? c.Op("reshape", [dy], ("to", DimsOf(c.Node.Inputs[0].Type))) : null],
        });

        add(new OpDef
        {
            Name = "transpose",
            IsView = true,
            Doc = "reorders dims by name",
            Signature = Sig(1, 1, Dims("to")),
            Infer = c =>
            {
                var t = c.Inputs[0];
                var to = c.DimNames("to");
                if (to.Length != t.Rank || to.Distinct().Count() != to.Length || to.Any(d => !t.Has(d)))
                    throw InferContext.Fail($"transpose: [{string.Join(", ", to)}] is not a permutation of the dims of {t}");
                return One(t.WithDims(to.Select(d => t.Dims[t.IndexOf(d)])));
            },
            Flops = _ => 0,
            Lower = c => new RtCall("Permute", LArg.In(0), LArg.Lit(c.Out().Dims.Select(d => (long)c.In(0).IndexOf(d.Name)).ToArray())),
            Sharding = n => ShardingRule.ByName(n),
            Linearity = Linearity.Unary,
            Vjp = c => [c.Wants(0) && c.Dy() is { } dy ? c.Op("transpose", [dy], ("to", DimsOf(c.Node.Inputs[0].Type))) : null],
        });

        add(new OpDef
        {
            Name = "split",
            IsView = true,
            Doc = "splits one dim into consecutive pieces, one result per piece: a, b = split(x, along=d, into=[da, db])",
            Signature = Sig(1, 1, Dim("along"), Dims("into")),
            Infer = c =>
            {
                var t = c.Inputs[0];
                var axis = c.AxisOf(0, "along");
                var into = NewDims(c, c.DimNames("into"), "split");
                var total = into.Sum(d => d.Size);
                if (total != t.Dims[axis].Size)
                    throw InferContext.Fail($"split: pieces [{string.Join(", ", into.Select(d => $"{d.Name}={d.Size}"))}] sum to {total}, not {t.Dims[axis].Name}={t.Dims[axis].Size}");
                return into.Select(d => Replace(c, t, axis, d)).ToImmutableArray();
            },
            Flops = _ => 0,
            Lower = c => new RtCall("Split", LArg.In(0), LArg.Lit(c.Axis(0, "along")),
                LArg.Lit(c.Node.Outputs.Select(o => o.Type.Dims[(int)c.Axis(0, "along")].Size).ToArray())),
            Sharding = n => ShardingRule.ByName(n, ShardingRule.OneSided(n)),
            Linearity = Linearity.Unary,
            // The pieces' cotangents (zeros for pieces nobody used) joined back along the split dim.
            Vjp = c =>
            {
                if (!c.Wants(0) || Enumerable.Range(0, c.Node.Outputs.Length).All(k => c.Dy(k) is null)) return Vjps.None(c);
                var axis = c.Node.Inputs[0].Type.IndexOf(c.Attr<DimsAttr>("along").Names[0]);
                var parts = Enumerable.Range(0, c.Node.Outputs.Length).Select(c.DyOrZeros).ToList();
                return [c.Op("concat", parts, ("along", new DimsAttr([.. c.Node.Outputs.Select(o => o.Type.Dims[axis].Name)])), ("as", c.Attr<DimsAttr>("along")))];
            },
        });

        add(new OpDef
        {
            Name = "concat",
            Doc = "joins operands along one dim each (along=[da, db]) into a new dim (as=d)",
            Signature = Sig(2, OpSignature.Variadic, Dims("along"), Dim("as")),
            Infer = c =>
            {
                var along = c.DimNames("along");
                if (along.Length != c.Inputs.Length)
                    throw InferContext.Fail($"concat: {c.Inputs.Length} operands but along names {along.Length} dims");
                c.SameDType("operand");
                var first = c.Inputs[0];
                var axis = first.IndexOf(along[0]);
                if (axis < 0) throw InferContext.Fail($"concat: '{along[0]}' is not a dim of operand 1 {first}");
                for (int i = 0; i < c.Inputs.Length; i++)
                {
                    var t = c.Inputs[i];
                    if (t.IndexOf(along[i]) != axis || t.Rank != first.Rank)
                        throw InferContext.Fail($"concat: operand {i + 1} {t} must have '{along[i]}' at position {axis + 1}");
                    for (int k = 0; k < t.Rank; k++)
                        if (k != axis && t.Dims[k] != first.Dims[k])
                            throw InferContext.Fail($"concat: operand {i + 1} {t} differs from {first} outside the concatenated dim");
                }
                var asDim = c.OneDim("as");
                var total = Enumerable.Range(0, c.Inputs.Length).Sum(i => c.Inputs[i].Dims[axis].Size);
                if (asDim.Size != total)
                    throw InferContext.Fail($"concat: the pieces sum to {total} but '{asDim.Name}' has size {asDim.Size}");
                return One(Replace(c, first, axis, asDim));
            },
            Flops = _ => 0,
            Lower = c => new RtCall("Concat", new LAllInputs(), LArg.Lit(c.Axis(0, "along"))),
            // Not FreshBuffer, on purpose: code generation may make a join's pieces views of it that a layer loop keeps
            // (CodeGen.ConcatDestinations, LayerStacks), so no op may be handed the join's buffer to write in place.
            Sharding = n => ShardingRule.ByName(n, ShardingRule.OneSided(n)),
            Linearity = Linearity.Sum,
            Vjp = c =>
            {
                if (c.Dy() is not { } dy) return Vjps.None(c);
                var pieces = c.Ops("split", [dy], ("along", c.Attr<DimsAttr>("as")), ("into", c.Attr<DimsAttr>("along")));
                return [.. pieces.Select((p, i) => c.Wants(i) ? p : null)];
            },
        });
    }

    private static DimsAttr DimsOf(TensorType t) => new([.. t.Dims.Select(d => d.Name)]);

    private static long Elements(TensorType t)
    {
        try { return t.ElementCount; }
        catch (OverflowException) { throw InferContext.Fail($"reshape: {t} has more than 2^63 elements"); }
    }

    private static ImmutableArray<Dim> NewDims(InferContext c, ImmutableArray<string> names, string op)
    {
        if (names.Distinct().Count() != names.Length) throw InferContext.Fail($"{op}: a dim is named twice in [{string.Join(", ", names)}]");
        return names.Select(c.Dim).ToImmutableArray();
    }

    private static TensorType Replace(InferContext c, TensorType t, int axis, Dim d)
    {
        if (t.Dims.Where((_, k) => k != axis).Any(x => x.Name == d.Name))
            throw InferContext.Fail($"{c.Op.Name}: dim '{d.Name}' already occurs in {t}");
        return t.WithDims(t.Dims.SetItem(axis, d));
    }
}
