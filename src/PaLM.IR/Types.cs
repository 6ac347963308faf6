using System.Collections.Immutable;

namespace PaLM.IR;

/// <summary>Element types the IR knows.</summary>
public enum DType { F32, BF16, I32, F64 }

/// <summary>Spelling of dtypes in the DSL and the IR text.</summary>
public static class DTypes
{
    public static string Name(DType t) => t switch { DType.F32 => "f32", DType.BF16 => "bf16", DType.I32 => "i32", DType.F64 => "f64", _ => throw new ArgumentOutOfRangeException(nameof(t)) };

    public static bool TryParse(string s, out DType t)
    {
        switch (s)
        {
            case "f32": t = DType.F32; return true;
            case "bf16": t = DType.BF16; return true;
            case "i32": t = DType.I32; return true;
            case "f64": t = DType.F64; return true;
            default: t = default; return false;
        }
    }

    public static int Bytes(DType t) => t switch { DType.BF16 => 2, DType.F64 => 8, _ => 4 };

    public static bool IsFloat(DType t) => t != DType.I32;
}

/// <summary>A named dimension with its size. Every tensor dimension in the IR is a declared dim.</summary>
public readonly record struct Dim(string Name, long Size)
{
    public override string ToString() => Name;
}

/// <summary>
/// A tensor type: dtype and an ordered list of named dims (names unique within a type).
/// Rank 0 is a scalar. Equality is structural.
/// </summary>
public sealed class TensorType : IEquatable<TensorType>
{
    public TensorType(DType dtype, ImmutableArray<Dim> dims)
    {
        DType = dtype;
        Dims = dims.IsDefault ? ImmutableArray<Dim>.Empty : dims;
    }

    public TensorType(DType dtype, params Dim[] dims) : this(dtype, dims.ToImmutableArray()) { }

    public DType DType { get; }
    public ImmutableArray<Dim> Dims { get; }
    public int Rank => Dims.Length;

    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Dims) n = checked(n * d.Size);
            return n;
        }
    }

    public long Bytes => ElementCount * DTypes.Bytes(DType);

    public long[] Shape => Dims.Select(d => d.Size).ToArray();

    /// <summary>Position of the dim called <paramref name="name"/>, or -1.</summary>
    public int IndexOf(string name)
    {
        for (int i = 0; i < Dims.Length; i++)
            if (Dims[i].Name == name) return i;
        return -1;
    }

    public bool Has(string name) => IndexOf(name) >= 0;

    public TensorType WithDims(IEnumerable<Dim> dims) => new(DType, dims.ToImmutableArray());

    public TensorType WithDType(DType dtype) => new(dtype, Dims);

    public bool Equals(TensorType? other) =>
        other is not null && DType == other.DType && Dims.SequenceEqual(other.Dims);

    public override bool Equals(object? obj) => Equals(obj as TensorType);

    public override int GetHashCode()
    {
        var h = new HashCode();
        h.Add(DType);
        foreach (var d in Dims) h.Add(d);
        return h.ToHashCode();
    }

    /// <summary>IR text form, e.g. <c>f32[batch, seq, d_model]</c>.</summary>
    public override string ToString() => $"{DTypes.Name(DType)}[{string.Join(", ", Dims.Select(d => d.Name))}]";
}

/// <summary>Where something came from in the DSL source (1-based line and column).</summary>
public sealed record SourceLoc(string File, int Line, int Column)
{
    public override string ToString() => $"{File}:{Line}:{Column}";
}
