using PaLM.Runtime;
using static TorchSharp.torch;
using static PaLM.Runtime.Tests.TestUtil;

namespace PaLM.Runtime.Tests;

public sealed class RtOpsTests
{
    public RtOpsTests() => Init();

    [Fact]
    public void ElementwiseOpsMatchTorch()
    {
        using var scope = Rt.Scope();
        var a = Randn(1, 2, 3, 4);
        var b = Randn(2, 3, 4);                      // broadcasts positionally from the right
        var p = a.abs().add(0.1);
        AssertClose(a + b, Rt.Add(a, b));
        AssertClose(a - b, Rt.Sub(a, b));
        AssertClose(a * b, Rt.Mul(a, b));
        AssertClose(a / b, Rt.Div(a, b));
        AssertClose(maximum(a, b), Rt.Maximum(a, b));
        AssertClose(-a, Rt.Neg(a));
        AssertClose(a.exp(), Rt.Exp(a));
        AssertClose(p.log(), Rt.Log(p));
        AssertClose(ones_like(p) / p.sqrt(), Rt.Rsqrt(p));
        AssertClose(p.sqrt(), Rt.Sqrt(p));
        AssertClose(a.tanh(), Rt.Tanh(a));
        AssertClose(ones_like(a) / (ones_like(a) + (-a).exp()), Rt.Sigmoid(a));
        AssertClose(a / (ones_like(a) + (-a).exp()), Rt.Silu(a));
        AssertClose(a * a, Rt.Square(a));
    }

    [Fact]
    public void ConstantsAndInitializers()
    {
        using var scope = Rt.Scope();
        var c = Rt.Constant(2.5, ScalarType.BFloat16);
        Assert.Equal(0, c.dim());
        Assert.Equal(ScalarType.BFloat16, c.dtype);
        Assert.Equal(2.5, c.to_type(ScalarType.Float64).item<double>());

        // fp32 and fp64 constants are made in their own type: the same bits as libtorch's conversion of the double.
        foreach (var value in (double[])[0.1, -0.0, 1e-40, 3.4028235677973366e38, 1e39, -1e39, double.NaN, 1.0 / 3, 16777217.0])
            foreach (var dtype in (ScalarType[])[ScalarType.Float32, ScalarType.Float64])
            {
                using var made = Rt.Constant(value, dtype);
                using var expected = tensor(value, dtype);
                Assert.Equal(0, made.dim());
                Assert.Equal(dtype, made.dtype);
                Assert.Equal(expected.bytes.ToArray(), made.bytes.ToArray());
            }

        var full = Rt.InitConstant([2, 3], 0.5, ScalarType.Float32);
        Assert.Equal([2L, 3L], full.shape);
        Assert.All(Values(full), v => Assert.Equal(0.5f, v));

        using var g1 = Rt.NewGenerator(7);
        using var g2 = Rt.NewGenerator(7);
        var n1 = Rt.InitNormal(g1, [200, 100], 0.02, ScalarType.Float32);
        var n2 = Rt.InitNormal(g2, [200, 100], 0.02, ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, n2.dtype);
        AssertClose(n1, n2.to_type(ScalarType.Float32), rtol: 1e-2, atol: 1e-4);   // same draws, cast after
        Assert.InRange(n1.std().item<float>(), 0.019, 0.021);
        Assert.InRange(n1.mean().item<float>(), -0.001, 0.001);
        using var g3 = new Generator(7);
        AssertClose(randn([200, 100], generator: g3) * 0.02, n1);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void ConcatOfPermutedPiecesEqualsTorchCatAndKeepsTheirMemoryOrder(int seed)
    {
        // Pieces that are one permutation of contiguous tensors are joined in memory order (Rt.Concat's fast path);
        // mixed layouts and contiguous pieces take torch.cat. Either way the values equal torch.cat's.
        using var scope = Rt.Scope();
        var rng = new Random(seed);
        var rank = rng.Next(2, 5);
        var perm = Enumerable.Range(0, rank).Select(i => (long)i).OrderBy(_ => rng.Next()).ToArray();
        if (perm.Select((p, i) => p == i).All(b => b)) perm = [.. perm.Reverse()];
        var axis = rng.Next(rank);
        var shape = Enumerable.Range(0, rank).Select(_ => (long)rng.Next(2, 6)).ToArray();
        var pieces = Enumerable.Range(0, rng.Next(2, 5)).Select(_ =>
        {
            var s = (long[])shape.Clone();
            s[axis] = rng.Next(1, 5);
            // Stored in the order perm, seen in the logical order: x.permute(perm) is contiguous.
            var stored = Randn(rng.Next(), [.. perm.Select(d => s[d])]);
            var inverse = new long[rank];
            for (int i = 0; i < rank; i++) inverse[perm[i]] = i;
            return stored.permute(inverse);
        }).ToArray();
        var expected = cat(pieces, axis);
        var joined = Rt.Concat(pieces, axis);
        AssertClose(expected, joined, rtol: 0, atol: 0);
        if (pieces.All(p => p.shape[axis] > 1))
            Assert.True(joined.permute(perm).is_contiguous(), "the join keeps the pieces' memory order");

        // One piece in another layout: the general path, same values.
        pieces[0] = pieces[0].contiguous();
        AssertClose(cat(pieces, axis), Rt.Concat(pieces, axis), rtol: 0, atol: 0);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void SumsOfSquaresEqualSquaringThenReducing(int seed)
    {
        // Random shapes, reduced dims and layouts (a transposed operand included): the chunked reduction equals
        // square-then-sum within float rounding.
        using var scope = Rt.Scope();
        var rng = new Random(seed);
        var rank = rng.Next(1, 5);
        var shape = Enumerable.Range(0, rank).Select(_ => (long)rng.Next(1, 40)).ToArray();
        var x = Randn(seed, shape);
        if (rank >= 2 && seed % 2 == 0) x = x.transpose(0, rank - 1).contiguous().transpose(0, rank - 1);
        var axes = Enumerable.Range(0, rank).Where(_ => rng.Next(2) == 0).Select(i => (long)i).ToArray();
        if (axes.Length == 0) axes = [rank - 1];
        AssertClose(x.square().sum(axes), Rt.SumSquares(x, axes), rtol: 1e-5, atol: 1e-5);
        AssertClose(x.square().mean(axes), Rt.MeanSquares(x, axes), rtol: 1e-5, atol: 1e-6);
        var half = x.to_type(ScalarType.BFloat16);
        AssertClose(half.to_type(ScalarType.Float32).square().sum(axes), Rt.SumSquares(half, axes).to_type(ScalarType.Float32), rtol: 1e-2, atol: 1e-2);
    }

    [Fact]
    public void ALargeSumOfSquaresIsAccurate()
    {
        // 14M elements, as palm-cpu's w_down: within 1e-6 of an fp64 sum (libtorch's vector_norm is off by ~1e-3 here).
        using var scope = Rt.Scope();
        var x = Randn(11, 6, 3072, 768) * 0.01;
        var exact = x.to_type(ScalarType.Float64).square().sum().item<double>();
        var got = Rt.SumSquares(x, [0, 1, 2]).item<float>();
        Assert.True(Math.Abs(got - exact) / exact < 1e-6, $"{got} vs {exact}");
        var perLayer = Rt.MeanSquares(x, [1, 2]);
        AssertClose(x.to_type(ScalarType.Float64).square().mean([1L, 2L]), perLayer, rtol: 1e-6, atol: 0);
    }

    [Fact]
    public void ShapeOps()
    {
        using var scope = Rt.Scope();
        var x = Randn(3, 2, 3, 4);
        AssertClose(x.permute(2, 0, 1), Rt.Permute(x, [2, 0, 1]));
        AssertClose(x.reshape(6, 4), Rt.Reshape(x, [6, 4]));
        var parts = Rt.Split(x, 2, [1, 3]);
        Assert.Equal(2, parts.Length);
        AssertClose(x.narrow(2, 0, 1), parts[0]);
        AssertClose(x.narrow(2, 1, 3), parts[1]);
        AssertClose(x, Rt.Concat(parts, 2));
        AssertClose(x[TensorIndex.Colon, 1], Rt.Select(x, 1, 1));
        var h = Rt.Cast(x, ScalarType.Float16);
        Assert.Equal(ScalarType.Float16, h.dtype);
        AssertClose(x, h, rtol: 1e-3, atol: 1e-3);
        var same = Rt.Cast(x, ScalarType.Float32);
        Assert.NotSame(x, same);
        same.Dispose();
        Assert.False(x.IsInvalid);     // a distinct handle: disposing or keeping the result leaves x alone
        Assert.NotSame(x, Rt.Sum(x, []));
    }

    [Fact]
    public void EinsumMatchesExplicitMatmul()
    {
        using var scope = Rt.Scope();
        var h = Randn(4, 2, 3, 5);          // [b, s, d]
        var w = Randn(5, 5, 2, 4);          // [d, h, k]
        var expected = h.reshape(6, 5).matmul(w.reshape(5, 8)).reshape(2, 3, 2, 4);
        AssertClose(expected, Rt.Einsum("bsd,dhk->bshk", h, w), rtol: 1e-5, atol: 1e-5);
    }

    [Fact]
    public void Reductions()
    {
        using var scope = Rt.Scope();
        var x = Randn(6, 2, 3, 4);
        AssertClose(x.sum(0L).sum(1L), Rt.Sum(x, [0, 2]));
        AssertClose(x.mean([1]), Rt.Mean(x, [1]));
        AssertClose(x.max(2).values.max(0).values, Rt.Max(x, [0, 2]));
        AssertClose(x, Rt.Sum(x, []));
        var e = x.exp();
        AssertClose(e / e.sum([1], keepdim: true), Rt.Softmax(x, 1));
        AssertClose(e.sum(2).log(), Rt.LogSumExp(x, 2));
    }

    [Fact]
    public void LayerNormMatchesManual()
    {
        using var scope = Rt.Scope();
        var x = Randn(7, 2, 3, 8) * 3 + 1;
        var scale = Randn(8, 8);
        var xd = x.to_type(ScalarType.Float64);
        var mean = xd.mean([-1], keepdim: true);
        var variance = (xd - mean).square().mean([-1], keepdim: true);
        var expected = (xd - mean) / (variance + 1e-6).sqrt() * scale.to_type(ScalarType.Float64);
        AssertClose(expected, Rt.LayerNorm(x, scale, 1e-6), rtol: 1e-5, atol: 1e-5);
        // A scale that only broadcasts takes the unfused path.
        AssertClose(expected, Rt.LayerNorm(x, scale.reshape(1, 1, 8), 1e-6), rtol: 1e-5, atol: 1e-5);
    }

    // out[.., s, .., i] = x_i·cos(s·θ_j) ∓ x_{partner}·sin(s·θ_j), θ_j = 10000^(-2j/K), j = i mod K/2.
    private static double[] RopeByLoop(float[] x, long[] shape, int seqAxis, int featAxis)
    {
        var strides = new long[shape.Length];
        strides[^1] = 1;
        for (var d = shape.Length - 2; d >= 0; d--)
            strides[d] = strides[d + 1] * shape[d + 1];
        long k = shape[featAxis], half = k / 2;
        var result = new double[x.Length];
        for (long flat = 0; flat < x.Length; flat++)
        {
            var s = flat / strides[seqAxis] % shape[seqAxis];
            var i = flat / strides[featAxis] % k;
            var j = i % half;
            var angle = s * Math.Pow(10000, -2.0 * j / k);
            var partner = i < half ? -x[flat + half * strides[featAxis]] : x[flat - half * strides[featAxis]];
            result[flat] = x[flat] * Math.Cos(angle) + partner * Math.Sin(angle);
        }
        return result;
    }

    [Theory]
    [InlineData(new long[] { 2, 5, 3, 8 }, 1, 3)]   // q [B, S, H, K]
    [InlineData(new long[] { 2, 6, 4 }, 1, 2)]      // k [B, S, K]
    [InlineData(new long[] { 2, 3, 5, 6 }, 2, 3)]   // [B, H, S, K]
    [InlineData(new long[] { 2, 6, 7 }, 2, 1)]      // features before positions: [B, K, S]
    public void RopeMatchesExplicitLoop(long[] shape, int seqAxis, int featAxis)
    {
        using var scope = Rt.Scope();
        var x = Randn(9, shape);
        var expected = tensor(RopeByLoop(Values(x), shape, seqAxis, featAxis), shape);
        AssertClose(expected, Rt.Rope(x, seqAxis, featAxis), rtol: 1e-5, atol: 1e-5);
        Assert.Equal(ScalarType.BFloat16, Rt.Rope(x.to_type(ScalarType.BFloat16), seqAxis, featAxis).dtype);
        // The inverse rotation undoes it (the VJP's rope), on a strided view as well as on a contiguous tensor, and x is
        // left as it was.
        var strided = x.transpose(0, 1).contiguous().transpose(0, 1);
        var before = x.clone();
        AssertClose(x, Rt.Rope(Rt.Rope(x, seqAxis, featAxis), seqAxis, featAxis, inverse: 1), rtol: 1e-5, atol: 1e-5);
        AssertClose(expected, Rt.Rope(strided, seqAxis, featAxis), rtol: 1e-5, atol: 1e-5);
        AssertClose(before, x, rtol: 0, atol: 0);
    }

    [Fact]
    public void CausalMaskHidesLaterKeys()
    {
        using var scope = Rt.Scope();
        var x = Randn(10, 2, 3, 4, 4);                   // [B, H, Sq, Sk]
        var masked = Rt.CausalMask(x, 2, 3);
        var transposed = Rt.CausalMask(x.transpose(2, 3), 3, 2).transpose(2, 3);
        var xs = Values(x);
        var ms = Values(masked);
        for (var flat = 0; flat < xs.Length; flat++)
        {
            int key = flat % 4, query = flat / 4 % 4;
            Assert.Equal(key > query ? float.NegativeInfinity : xs[flat], ms[flat]);
        }
        Assert.Equal(ms, Values(transposed));
        var rect = Rt.CausalMask(Randn(11, 2, 3), 0, 1);   // 2 queries, 3 keys
        Assert.Equal([false, true, true, false, false, true], Values(rect).Select(float.IsNegativeInfinity).ToArray());
    }

    [Fact]
    public void GatherIsNumpyTake()
    {
        using var scope = Rt.Scope();
        var table = Randn(12, 5, 3);
        var idx = tensor(new int[] { 4, 0, 2, 2, 1, 3 }, [2, 3]);
        var rows = Rt.Gather(table, idx, 0);
        Assert.Equal([2L, 3L, 3L], rows.shape);
        var t = Values(table);
        var r = Values(rows);
        var ids = new[] { 4, 0, 2, 2, 1, 3 };
        for (var p = 0; p < 6; p++)
        {
            for (var d = 0; d < 3; d++)
                Assert.Equal(t[ids[p] * 3 + d], r[p * 3 + d]);
        }

        var cube = Randn(13, 2, 5, 3);
        var mid = Rt.Gather(cube, idx.to_type(ScalarType.Int64), 1);
        Assert.Equal([2L, 2L, 3L, 3L], mid.shape);
        AssertClose(cube[TensorIndex.Colon, 2], mid[TensorIndex.Colon, 0, 2]);
        AssertClose(cube[TensorIndex.Colon, 3], mid[TensorIndex.Colon, 1, 2]);
    }

    [Theory]
    [InlineData(2, ScalarType.Int32)]
    [InlineData(1, ScalarType.Int64)]
    public void CrossEntropyMatchesManualLogSoftmax(int axis, ScalarType targetType)
    {
        using var scope = Rt.Scope();
        long b = 2, s = 3, v = 7;
        var logits = Randn(14, b, s, v) * 2;
        using var g = new Generator(15);
        var targets = randint(0, v, [b, s], ScalarType.Int64, generator: g);
        var x = Values(logits);
        var tg = targets.data<long>().ToArray();
        var expected = new double[b * s];
        for (var p = 0; p < b * s; p++)
        {
            var row = x.Skip((int)(p * v)).Take((int)v).Select(f => (double)f).ToArray();
            var max = row.Max();
            var lse = max + Math.Log(row.Sum(z => Math.Exp(z - max)));
            expected[p] = lse - row[tg[p]] + 1e-4 * lse * lse;
        }
        var input = axis == 2 ? logits : logits.permute(0, 2, 1);    // [B, V, S] puts the vocab on axis 1
        var actual = Rt.CrossEntropy(input, targets.to_type(targetType), axis, 1e-4);
        AssertClose(tensor(expected, [b, s]), actual, rtol: 1e-5, atol: 1e-5);
        // Without z-loss it is torch's cross-entropy.
        var plain = Rt.CrossEntropy(logits, targets, 2, 0);
        AssertClose(nn.functional.cross_entropy(logits.reshape(-1, v), targets.reshape(-1), reduction: nn.Reduction.None).reshape(b, s), plain);
    }

    [Fact]
    public void KeepMovesOutOfScope()
    {
        Tensor kept;
        Tensor dropped;
        using (Rt.Scope())
        {
            dropped = Randn(16, 2);
            kept = Rt.Keep(Rt.Mul(dropped, dropped));
        }
        Assert.True(dropped.IsInvalid);
        Assert.False(kept.IsInvalid);
        kept.Dispose();
    }

    [Fact]
    public void BatchesAreSeededAndShifted()
    {
        using var scope = Rt.Scope();
        var (tokens, targets) = Batches.Random(3, 4, 5, 11);
        var (tokens2, _) = Batches.Random(3, 4, 5, 11);
        Assert.Equal(ScalarType.Int32, tokens.dtype);
        Assert.Equal([4L, 5L], tokens.shape);
        Assert.Equal([4L, 5L], targets.shape);
        Assert.Equal(tokens.data<int>().ToArray(), tokens2.data<int>().ToArray());
        Assert.Equal(tokens.narrow(1, 1, 4).contiguous().data<int>().ToArray(), targets.narrow(1, 0, 4).contiguous().data<int>().ToArray());
        Assert.All(tokens.data<int>().ToArray(), t => Assert.InRange(t, 0, 10));
    }
}
