using System.Collections.Immutable;

namespace PaLM.IR;

/// <summary>Small shared pieces of op rules.</summary>
internal static class OpHelpers
{
    public static ImmutableArray<TensorType> One(TensorType t) => ImmutableArray.Create(t);

    public static OpSignature Sig(int min, int max, params AttrSpec[] attrs) => new(min, max, attrs.ToImmutableArray());

    public static AttrSpec Dim(string name) => new(name, AttrKind.Dim);

    public static AttrSpec Dims(string name) => new(name, AttrKind.Dims);

    public static AttrSpec Float(string name, double? dflt = null) =>
        new(name, AttrKind.Float, dflt is { } d ? new FloatAttr(d) : null);

    public static long Numel(Node n, int input = 0) => n.Inputs[input].Type.ElementCount;

    public static long OutNumel(Node n) => n.Outputs[0].Type.ElementCount;

    /// <summary>
    /// Aligns operand <paramref name="i"/> to <paramref name="target"/> by name for positional broadcasting:
    /// permute its dims into target order, then view with size-1 dims where it lacks one.
    /// </summary>
    public static LArg AlignTo(LowerContext c, int i, TensorType target)
    {
        var src = c.In(i);
        if (src.Rank == 0 || src.Dims.SequenceEqual(target.Dims)) return LArg.In(i);
        LArg arg = LArg.In(i);
        var order = src.Dims.Select(d => target.IndexOf(d.Name)).ToArray();
        var perm = Enumerable.Range(0, src.Rank).OrderBy(k => order[k]).Select(k => (long)k).ToArray();
        if (!perm.Select((p, k) => p == k).All(b => b))
            arg = new LNested(new RtCall("Permute", arg, LArg.Lit(perm)));
        var isSuffix = target.Rank >= src.Rank &&
            target.Dims.Skip(target.Rank - src.Rank).Select(d => d.Name).SequenceEqual(src.Dims.Select(d => d.Name).OrderBy(n => target.IndexOf(n)));
        if (!isSuffix)
        {
            var view = target.Dims.Select(d => src.Has(d.Name) ? d.Size : 1L).ToArray();
            arg = new LNested(new RtCall("Reshape", arg, LArg.Lit(view)));
        }
        return arg;
    }
}
