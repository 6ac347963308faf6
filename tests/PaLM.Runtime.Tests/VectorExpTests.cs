using System.Runtime.Intrinsics;
using PaLM.Runtime;

namespace PaLM.Runtime.Tests;

/// <summary>
/// The runtime's fp32 exp (<see cref="VectorExp"/>) against fp64 <c>Math.Exp</c>: within 2 ulp over the normal range,
/// right at the edges (overflow, subnormals, underflow, infinities, NaN), and the span form the same bits as the vector
/// form whatever a span's length and start, so that a fused loop's vector pass and its span fallback agree.
/// </summary>
public sealed class VectorExpTests
{
    private static float[] Vectorized(Func<Vector512<float>, Vector512<float>> f, float[] xs)
    {
        var result = new float[xs.Length];
        var lane = new float[16];
        for (int i = 0; i < xs.Length; i++)
        {
            Array.Fill(lane, xs[i]);
            result[i] = f(Vector512.Create(lane))[i % 16];      // a different lane each time
        }
        return result;
    }

    private static long Ulps(float a, float b) => Math.Abs((long)BitConverter.SingleToInt32Bits(a) - BitConverter.SingleToInt32Bits(b));

    [Fact]
    public void ExpIsWithinTwoUlpOfFp64OverTheNormalRange()
    {
        var rng = new Random(5);
        const int N = 1 << 20;
        var xs = new float[N];
        for (int i = 0; i < N; i++)
            xs[i] = i % 2 == 0 ? -87.3f + 176f * i / N : (float)(rng.NextDouble() * 176 - 87.3);
        var ys = new float[N];
        VectorExp.Exp(xs, ys);
        long worst = 0;
        float worstX = 0;
        for (int i = 0; i < N; i++)
        {
            var want = (float)Math.Exp(xs[i]);
            var u = Ulps(want, ys[i]);
            if (u > worst) (worst, worstX) = (u, xs[i]);
        }
        Assert.True(worst <= 2, $"exp({worstX}) is {worst} ulp off");
    }

    [Fact]
    public void ExpGetsTheEdgesRight()
    {
        float[] xs = [0f, 1f, -1f, 88.72283f, 88.7229f, 100f, float.PositiveInfinity, -87.33654f, -90f, -100f, -103.9f, -104f, -1000f,
            float.NegativeInfinity, float.NaN, float.MaxValue, float.MinValue];
        var ys = new float[xs.Length];
        VectorExp.Exp(xs, ys);
        Assert.Equal(1f, ys[0]);
        Assert.True(Ulps((float)Math.E, ys[1]) <= 1 && Ulps((float)Math.Exp(-1), ys[2]) <= 1);
        Assert.True(float.IsFinite(ys[3]) && Ulps((float)Math.Exp(xs[3]), ys[3]) <= 2, $"exp(88.72283) = {ys[3]}");
        Assert.Equal([float.PositiveInfinity, float.PositiveInfinity, float.PositiveInfinity], ys[4..7]);
        // Subnormal results: within a few units of the smallest subnormal of fp64's value.
        for (int i = 7; i <= 10; i++)
            Assert.True(Math.Abs(ys[i] - Math.Exp(xs[i])) <= Math.Max(2 * float.Epsilon, 4e-7 * Math.Exp(xs[i])), $"exp({xs[i]}) = {ys[i]:E}, fp64 {Math.Exp(xs[i]):E}");
        Assert.Equal([0f, 0f, 0f], ys[11..14]);
        Assert.True(float.IsNaN(ys[14]));
        Assert.Equal(float.PositiveInfinity, ys[15]);
        Assert.Equal(0f, ys[16]);
    }

    [Fact]
    public void SigmoidIsWithinFourUlpAndSaturates()
    {
        var rng = new Random(6);
        var xs = new float[100_000];
        for (int i = 0; i < xs.Length; i++) xs[i] = (float)(rng.NextDouble() * 60 - 30);
        var ys = new float[xs.Length];
        VectorExp.Sigmoid(xs, ys);
        for (int i = 0; i < xs.Length; i++)
            Assert.True(Ulps((float)(1 / (1 + Math.Exp(-xs[i]))), ys[i]) <= 4, $"sigmoid({xs[i]}) = {ys[i]}");
        float[] edges = [float.NegativeInfinity, -200f, 200f, float.PositiveInfinity, float.NaN];
        var s = new float[edges.Length];
        VectorExp.Sigmoid(edges, s);
        Assert.Equal([0f, 0f, 1f, 1f], s[..4]);
        Assert.True(float.IsNaN(s[4]));
    }

    [Fact]
    public void TheSpanFormGivesTheVectorFormsBitsAtEveryLengthAndStart()
    {
        if (!Vector512.IsHardwareAccelerated) return;      // the span form is TensorPrimitives' there, and no loop vectorizes
        var rng = new Random(7);
        var xs = new float[64];
        for (int i = 0; i < xs.Length; i++) xs[i] = (float)(rng.NextDouble() * 40 - 20);
        var wantExp = Vectorized(VectorExp.Exp, xs);
        var wantSigmoid = Vectorized(VectorExp.Sigmoid, xs);
        for (int start = 0; start < 17; start++)
            for (int length = 0; start + length <= xs.Length; length += 3)
            {
                var e = new float[length];
                var s = new float[length];
                VectorExp.Exp(xs.AsSpan(start, length), e);
                VectorExp.Sigmoid(xs.AsSpan(start, length), s);
                Assert.Equal(wantExp.AsSpan(start, length).ToArray(), e);
                Assert.Equal(wantSigmoid.AsSpan(start, length).ToArray(), s);
            }
        // In place, as the softmax rows use it.
        var copy = xs.ToArray();
        VectorExp.Exp(copy, copy);
        Assert.Equal(wantExp, copy);
    }
}
