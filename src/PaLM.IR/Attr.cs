using System.Collections.Immutable;
using System.Globalization;

namespace PaLM.IR;

/// <summary>A compile-time attribute of a node. Immutable; the text form is part of the IR's canonical text.</summary>
public abstract record Attr
{
    public abstract string Format();

    internal static string FormatFloat(double v)
    {
        var s = v.ToString("R", CultureInfo.InvariantCulture);
        return s.Contains('.') || s.Contains('E') || s.Contains('e') || !double.IsFinite(v) ? s : s + ".0";
    }
}

public sealed record IntAttr(long Value) : Attr
{
    public override string Format() => Value.ToString(CultureInfo.InvariantCulture);
}

public sealed record FloatAttr(double Value) : Attr
{
    public override string Format() => FormatFloat(Value);
}

public sealed record StringAttr(string Value) : Attr
{
    public override string Format() => "\"" + Value.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\"";
}

public sealed record DTypeAttr(DType Value) : Attr
{
    public override string Format() => DTypes.Name(Value);
}

/// <summary>A list of dim names (a single dim is a list of one).</summary>
public sealed record DimsAttr(ImmutableArray<string> Names) : Attr
{
    public override string Format() => "[" + string.Join(", ", Names) + "]";

    public bool Equals(DimsAttr? other) => other is not null && Names.SequenceEqual(other.Names);

    public override int GetHashCode() => string.Join(",", Names).GetHashCode(StringComparison.Ordinal);
}

/// <summary>A list of dim-name lists (einsum operand subscripts).</summary>
public sealed record DimListsAttr(ImmutableArray<ImmutableArray<string>> Lists) : Attr
{
    public override string Format() => "[" + string.Join(", ", Lists.Select(l => "[" + string.Join(", ", l) + "]")) + "]";

    public bool Equals(DimListsAttr? other) =>
        other is not null && Lists.Length == other.Lists.Length && Lists.Zip(other.Lists).All(p => p.First.SequenceEqual(p.Second));

    public override int GetHashCode() => Format().GetHashCode(StringComparison.Ordinal);
}
