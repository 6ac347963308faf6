using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace PaLM.Runtime;

/// <summary>
/// fp32 exp on 512-bit vectors, and over spans with the same bits in every element: Cephes' <c>expf</c> (x = n·ln 2 + r
/// with ln 2 in two parts, |r| ≤ ln 2 / 2, e^r by a degree-6 polynomial), with 2^n applied as two factors so that
/// results down to the smallest subnormal and up to the largest float come out right.
/// <para>
/// Why: .NET's <c>Vector512.Exp</c> (and <c>TensorPrimitives.Exp</c>, built on it) computes fp32 exp in fp64 lanes,
/// half a vector at a time; an fp32 polynomial does the same work in one. On this machine (scratch harness, 2026-12-06,
/// rows of 256 to 4M elements, one thread) it read 0.24–0.26 ns an element against <c>TensorPrimitives.Exp</c>'s
/// 0.29–0.39, and sigmoid 0.29–0.30 against 0.33–0.45; in palm-cpu's step, where attention's softmax and SwiGLU's loops
/// use it, the difference was within the noise (docs/performance.md).
/// </para>
/// <para>
/// Accuracy: within 2 ulp of the correctly rounded value over the normal range (VectorExpTests checks it against
/// <c>Math.Exp</c> in fp64 over 2^20 points of [−103, 88.7] and the edges); below −87.34 the result is subnormal and
/// loses bits with them; +∞ above 88.7228 (the largest x whose exp is finite), 0 below −103.97, NaN for NaN.
/// <c>TensorPrimitives.Exp</c> and torch's exp are each within about 1 ulp; results agree with them to float rounding,
/// not bit for bit.
/// </para>
/// <para>
/// The span form runs whole vectors, then the ragged end as one more vector through a small buffer, so an element's
/// value does not depend on where a row or a chunk starts or ends: a fused loop's vector pass and its span fallback, and
/// the softmax's row kernel and its epilogue inside the causal product, give the same bits.
/// </para>
/// </summary>
public static class VectorExp
{
    private const float Log2E = 1.44269504088896341f;
    // ln 2 = C1 + C2 with C1 exact in few bits, so n·C1 is exact for the n here (|n| ≤ 150).
    private const float C1 = 0.693359375f, C2 = -2.12194440e-4f;
    // The largest x with a finite exp; below −103.972 exp rounds to zero even as a subnormal, and clamping there (not at
    // that point, where it would round up to the smallest subnormal) keeps 2^n's two factors normal.
    private const float MaxArgument = 88.72283905206835f, MinArgument = -104f;

    /// <summary>e^x in each lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        var c = Vector512.Min(Vector512.Max(x, Vector512.Create(MinArgument)), Vector512.Create(MaxArgument));
        var n = Vector512.Round(c * Vector512.Create(Log2E));
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-C1), c);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-C2), r);
        var p = Vector512.Create(1.9875691500E-4f);
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1.3981999507E-3f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(8.3334519073E-3f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(4.1665795894E-2f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1.6666665459E-1f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(5.0000001201E-1f));
        p = Vector512.FusedMultiplyAdd(p, r * r, r) + Vector512<float>.One;
        // 2^n for n in [-150, 128] as 2^h · 2^(n−h), h = n/2: each factor is a normal float.
        var ni = Vector512.ConvertToInt32(n);
        var h = ni >> 1;
        var bias = Vector512.Create(127);
        var s1 = ((h + bias) << 23).AsSingle();
        var s2 = ((ni - h + bias) << 23).AsSingle();
        var e = p * s1 * s2;
        e = Vector512.ConditionalSelect(Vector512.GreaterThan(x, Vector512.Create(MaxArgument)), Vector512.Create(float.PositiveInfinity), e);
        return Vector512.ConditionalSelect(Vector512.Equals(x, x), e, x);
    }

    /// <summary>1 / (1 + e^−x) in each lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Sigmoid(Vector512<float> x) => Vector512<float>.One / (Vector512<float>.One + Exp(-x));

    /// <summary>e^x of each element of <paramref name="x"/> into <paramref name="d"/> (which may be
    /// <paramref name="x"/>).</summary>
    public static void Exp(ReadOnlySpan<float> x, Span<float> d) => Map<ExpOp>(x, d);

    /// <summary>1 / (1 + e^−x) of each element of <paramref name="x"/> into <paramref name="d"/>.</summary>
    public static void Sigmoid(ReadOnlySpan<float> x, Span<float> d) => Map<SigmoidOp>(x, d);

    /// <summary>A lane function, and the span function that stands in for it where 512-bit vectors are emulated.</summary>
    private interface IOp
    {
        static abstract Vector512<float> Apply(Vector512<float> x);
        static abstract void Fallback(ReadOnlySpan<float> x, Span<float> d);
    }

    private readonly struct ExpOp : IOp
    {
        public static Vector512<float> Apply(Vector512<float> x) => Exp(x);
        public static void Fallback(ReadOnlySpan<float> x, Span<float> d) => System.Numerics.Tensors.TensorPrimitives.Exp(x, d);
    }

    private readonly struct SigmoidOp : IOp
    {
        public static Vector512<float> Apply(Vector512<float> x) => Sigmoid(x);
        public static void Fallback(ReadOnlySpan<float> x, Span<float> d) => System.Numerics.Tensors.TensorPrimitives.Sigmoid(x, d);
    }

    private static void Map<TOp>(ReadOnlySpan<float> x, Span<float> d) where TOp : IOp
    {
        if (d.Length < x.Length) throw new ArgumentException("destination too short", nameof(d));
        if (!Vector512.IsHardwareAccelerated)
        {
            // Emulated 512-bit vectors would be slow; where they are, every span user (and no vector loop: see
            // Ev.Accelerated) takes TensorPrimitives' exp, so the paths still agree with each other.
            TOp.Fallback(x, d);
            return;
        }
        int w = Vector512<float>.Count, i = 0;
        ref float xs = ref MemoryMarshal.GetReference(x);
        ref float ds = ref MemoryMarshal.GetReference(d);
        for (; i <= x.Length - w; i += w)
            TOp.Apply(Vector512.LoadUnsafe(ref xs, (nuint)i)).StoreUnsafe(ref ds, (nuint)i);
        if (i == x.Length) return;
        Span<float> tail = stackalloc float[16];
        x[i..].CopyTo(tail);
        TOp.Apply(Vector512.Create<float>(tail)).CopyTo(tail);
        tail[..(x.Length - i)].CopyTo(d[i..]);
    }
}
