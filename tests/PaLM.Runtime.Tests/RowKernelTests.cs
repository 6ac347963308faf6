using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

/// <summary>The row kernels against the composite TorchSharp forms they replace, on layouts the attention produces
/// (the scores as a permuted view, the saved probabilities contiguous) and on ones they must decline.</summary>
public sealed class RowKernelTests
{
    public static TheoryData<int, bool, bool> Cases => new()
    {
        { 1, false, false }, { 2, true, false }, { 3, false, true }, { 4, true, true }, { 5, true, false },
    };

    /// <summary>[b, h, s, t] as a view of [b, s, h, t] memory when <paramref name="permuted"/>, as the scores einsum
    /// returns it; else the last layer's slice of a stacked [2, b, h, s, t] buffer (a nonzero storage offset), as the
    /// backward pass reads the saved probabilities.</summary>
    private static Tensor Scores(Generator g, long b, long h, long s, long t, bool permuted) =>
        permuted ? randn([b, s, h, t], generator: g).permute(0, 2, 1, 3) : randn([2, b, h, s, t], generator: g)[1];

    [Theory]
    [MemberData(nameof(Cases))]
    public void CausalSoftmaxMatchesMaskThenSoftmax(int seed, bool permuted, bool moreKeys)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var rng = new Random(seed);
        long b = rng.Next(1, 4), h = rng.Next(1, 6), s = rng.Next(1, 70), t = moreKeys ? s + rng.Next(1, 9) : s;
        var x = Scores(g, b, h, s, t, permuted) * 3;
        var expected = Rt.CausalMask(x, 2, 3).softmax(3);
        var actual = RowKernels.CausalSoftmax(x, 2, 3);
        Assert.True(actual.allclose(expected, rtol: 1e-5, atol: 1e-6), $"max difference {(actual - expected).abs().max().item<float>()}");
        Assert.Equal(0, actual.masked_select(expected.eq(0)).count_nonzero().item<long>());   // masked keys exactly 0
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void SoftmaxGradMatchesTheComposite(int seed, bool permutedDy, bool permutedY)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var rng = new Random(seed);
        long b = rng.Next(1, 4), h = rng.Next(1, 6), s = rng.Next(1, 70), t = s;
        var y = Scores(g, b, h, s, t, permutedY).softmax(3);
        var dy = Scores(g, b, h, s, t, permutedDy);
        var expected = y * (dy - (dy * y).sum(3, keepdim: true));
        var actual = RowKernels.SoftmaxGrad(dy, y, 3);
        Assert.True(actual.allclose(expected, rtol: 1e-5, atol: 1e-6), $"max difference {(actual - expected).abs().max().item<float>()}");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void LayerNormDxMatchesTheComposite(int seed, bool permutedX, bool slicedDy)
    {
        // x as a permuted view ([b, s, d] read from [s, b, d] memory) or contiguous; dy as a slice of a stacked buffer
        // (a nonzero storage offset) or fresh; rows of 1 to 1100 features, with offsets and scales far from 0 and 1.
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var rng = new Random(seed);
        long b = rng.Next(1, 4), n = rng.Next(1, 40), d = seed == 5 ? 1100 : rng.Next(1, 200);
        var x = (permutedX ? randn([n, b, d], generator: g).transpose(0, 1) : randn([b, n, d], generator: g)) * 3 + 5;
        var dy = slicedDy ? randn([2, b, n, d], generator: g)[1] : randn([b, n, d], generator: g);
        var scale = randn([d], generator: g) * 2 + 1;
        var expected = Rt.LayerNormDxComposite(dy, x, scale, 1e-6);
        var actual = RowKernels.LayerNormDx(dy, x, scale, 1e-6);
        Assert.NotNull(actual);
        Assert.True(actual.allclose(expected, rtol: 1e-4, atol: 1e-5), $"max difference {(actual - expected).abs().max().item<float>()}");
        // And against autograd through layer norm itself.
        var xr = x.detach().requires_grad_(true);
        nn.functional.layer_norm(xr, [d], weight: scale, eps: 1e-6).backward([dy]);
        Assert.True(actual.allclose(xr.grad!, rtol: 1e-4, atol: 1e-5), $"max difference from autograd {(actual - xr.grad!).abs().max().item<float>()}");
    }

    [Fact]
    public void LayerNormDxDeclinesWhatItDoesNotCover()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var x = randn(4, 6).t();                                         // feature dim strided
        Assert.Null(RowKernels.LayerNormDx(randn(6, 4), x, ones(4), 1e-6));
        Assert.Null(RowKernels.LayerNormDx(randn(3, 5), randn(3, 5), ones(3, 5), 1e-6));   // a scale that is not one row
        Assert.Null(RowKernels.LayerNormDx(randn(3, 5, ScalarType.Float64), randn(3, 5, ScalarType.Float64), ones(5, ScalarType.Float64), 1e-6));
        var dy = randn(6, 4);
        Assert.True(Rt.LayerNormDx(dy, x, ones(4), 1e-6).allclose(Rt.LayerNormDxComposite(dy, x, ones(4), 1e-6)));
    }

    [Fact]
    public void ARowDimThatIsNotContiguousTakesTheCompositeForm()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var x = randn(3, 5, 7).transpose(1, 2);             // softmax over dim 2, whose stride is 7
        var dy = randn(3, 7, 5);
        var y = x.softmax(2);
        Assert.True(RowKernels.SoftmaxGrad(dy, y, 2).allclose(y * (dy - (dy * y).sum(2, keepdim: true)), rtol: 1e-5, atol: 1e-6));
        Assert.True(RowKernels.CausalSoftmax(x, 1, 2).allclose(Rt.CausalMask(x, 1, 2).softmax(2), rtol: 1e-5, atol: 1e-6));
    }

    [Fact]
    public void AGappyLayoutWhoseCopyWouldNotKeepTheRowContiguousTakesTheCompositeForm()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        // Softmax over dim 1, contiguous in memory, but the tensor has gaps (a slice of the last dim): empty_like
        // would lay the result out row-major, where dim 1 is not contiguous.
        var view = randn(2, 9, 5).transpose(1, 2).slice(2, 0, 7, 1);     // [2, 5, 7]; dim 1 has stride 1
        view.copy_(randn(2, 5, 7).softmax(1));
        var dy = randn(2, 5, 7);
        Assert.Equal(1, view.stride(1));
        Assert.True(RowKernels.SoftmaxGrad(dy, view, 1).allclose(view * (dy - (dy * view).sum(1, keepdim: true)), rtol: 1e-5, atol: 1e-6));
    }

    /// <summary>Rope's row kernel against the TorchSharp form on the layouts it meets: the queries as a strided slice of
    /// a fused projection's output ([b, s, h, d] with rows of the fused width), a contiguous [b, s, d], the sequence
    /// after the features, and both rotations; K = 2 and a K whose half is no multiple of the vector width included.</summary>
    [Theory]
    [InlineData(1, 64, false, false)]
    [InlineData(2, 64, true, false)]
    [InlineData(3, 10, false, true)]
    [InlineData(4, 2, true, true)]
    public void RopeMatchesTheTableForm(int seed, long k, bool inverse, bool seqAfterFeatures)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        long b = 2, s = 9, h = 3;
        var fused = randn([b, s, h * k + 40], generator: g);
        var q = fused.narrow(2, 0, h * k).view(b, s, h, k);          // rows of K at the fused width's stride
        var x = seqAfterFeatures ? randn([b, k, s], generator: g).transpose(1, 2).contiguous().transpose(1, 2) : randn([b, s, k], generator: g);
        foreach (var (t, seqAxis, featureAxis) in new[] { (q, 1L, 3L), (x, 1L, 2L) })
        {
            var actual = RowKernels.Rope(t, seqAxis, featureAxis, inverse);
            if (seqAfterFeatures && ReferenceEquals(t, x))
            {
                Assert.Null(actual);                                    // features not contiguous: the table form runs
                continue;
            }
            Assert.NotNull(actual);
            var expected = Rt.RopeByTables(t, seqAxis, featureAxis, inverse ? 1 : 0);
            Assert.True(actual.allclose(expected, rtol: 1e-6, atol: 1e-6), $"max difference {(actual - expected).abs().max().item<float>()}");
            // The inverse undoes the rotation.
            Assert.True(RowKernels.Rope(actual, seqAxis, featureAxis, !inverse)!.allclose(t, rtol: 1e-5, atol: 1e-5));
        }
    }

    /// <summary>Layer norm's scale cotangent against layer_norm, multiply, sum: rows in one block and in several (a
    /// ragged last one), dy a strided slice, a single row; a bf16 input is declined.</summary>
    [Theory]
    [InlineData(1, new long[] { 3, 5, 70 }, false)]
    [InlineData(2, new long[] { 2, 100, 48 }, true)]
    [InlineData(3, new long[] { 333, 64 }, true)]
    [InlineData(4, new long[] { 40 }, false)]
    public void LayerNormDScaleMatchesTheComposite(int seed, long[] shape, bool stridedDy)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var x = randn(shape, generator: g) * 2 + 0.5;
        var d = shape[^1];
        var dy = stridedDy ? randn([.. shape[..^1], d + 9], generator: g).narrow(-1, 3, d) : randn(shape, generator: g);
        var axes = Enumerable.Range(0, shape.Length - 1).Select(i => (long)i).ToArray();
        var prod = nn.functional.layer_norm(x, [d], eps: 1e-5) * dy;
        var expected = axes.Length == 0 ? prod : prod.sum(axes);
        var actual = RowKernels.LayerNormDScale(dy, x, 1e-5);
        Assert.NotNull(actual);
        Assert.True(actual.allclose(expected, rtol: 1e-5, atol: 1e-4), $"max difference {(actual - expected).abs().max().item<float>()}");
        Assert.Null(RowKernels.LayerNormDScale(dy.to_type(ScalarType.BFloat16), x.to_type(ScalarType.BFloat16), 1e-5));
    }

    /// <summary>Both layer norm cotangents in one pass are the two kernels' results bit for bit: rows in one block and in
    /// several (a ragged last one), x a permuted view, dy a strided slice, a single row; what either kernel declines,
    /// the pair declines, and <c>Rt.LayerNormGrads</c> then gives the two calls' results.</summary>
    [Theory]
    [InlineData(1, new long[] { 3, 5, 70 }, false, false)]
    [InlineData(2, new long[] { 2, 100, 48 }, true, true)]
    [InlineData(3, new long[] { 333, 64 }, true, false)]
    [InlineData(4, new long[] { 40 }, false, false)]
    [InlineData(5, new long[] { 4, 67, 768 }, false, true)]
    public void LayerNormGradsAreTheTwoKernelsBitForBit(int seed, long[] shape, bool stridedDy, bool permutedX)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var d = shape[^1];
        var x = (permutedX && shape.Length == 3 ? randn([shape[1], shape[0], d], generator: g).transpose(0, 1) : randn(shape, generator: g)) * 3 + 0.5;
        var dy = stridedDy ? randn([.. shape[..^1], d + 9], generator: g).narrow(-1, 3, d) : randn(shape, generator: g);
        var scale = randn([d], generator: g) * 2 + 1;
        var pair = RowKernels.LayerNormGrads(dy, x, scale, 1e-5);
        Assert.NotNull(pair);
        var (dx, dscale) = pair.Value;
        Assert.True(Same(dx, RowKernels.LayerNormDx(dy, x, scale, 1e-5)!), "dx differs from LayerNormDx");
        Assert.True(Same(dscale, RowKernels.LayerNormDScale(dy, x, 1e-5)!), "dscale differs from LayerNormDScale");
        // And against autograd through layer norm itself.
        var (xr, sr) = (x.detach().requires_grad_(true), scale.detach().requires_grad_(true));
        nn.functional.layer_norm(xr, [d], weight: sr, eps: 1e-5).backward([dy]);
        Assert.True(dx.allclose(xr.grad!, rtol: 1e-4, atol: 1e-4), $"dx: max difference from autograd {(dx - xr.grad!).abs().max().item<float>()}");
        Assert.True(dscale.allclose(sr.grad!, rtol: 1e-4, atol: 1e-3), $"dscale: max difference from autograd {(dscale - sr.grad!).abs().max().item<float>()}");

        var (dyB, xB, sB) = (dy.to_type(ScalarType.BFloat16), x.to_type(ScalarType.BFloat16), scale.to_type(ScalarType.BFloat16));
        Assert.Null(RowKernels.LayerNormGrads(dyB, xB, sB, 1e-5));
        var fallback = Rt.LayerNormGrads(dyB, xB, sB, 1e-5);
        Assert.True(Same(fallback[0], Rt.LayerNormDx(dyB, xB, sB, 1e-5)) && Same(fallback[1], Rt.LayerNormDScale(dyB, xB, 1e-5)));
    }

    /// <summary>Same shape and dtype, and every element the same bits (NaN aside, which none of these make).</summary>
    private static bool Same(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    /// <summary>Cross entropy with z-loss and its gradient against the composite TorchSharp forms: the class dim last or
    /// in the middle (a permuted view whose class dim is contiguous), int32 and int64 targets (a transposed view among
    /// them), dy broadcast from one value as the mean's gradient is; a class dim that is not contiguous is declined.</summary>
    [Theory]
    [InlineData(1, 2, 0.0, false)]
    [InlineData(2, 2, 1e-4, true)]
    [InlineData(3, 1, 0.1, false)]
    [InlineData(4, 1, 1e-4, true)]
    public void CrossEntropyMatchesTheComposite(int seed, int axis, double zLoss, bool int32)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var rng = new Random(seed);
        long b = rng.Next(1, 5), s = rng.Next(1, 40), v = rng.Next(2, 300);
        // [b, s, v] dense, or [b, v, s] viewed from [b, s, v] memory: the class dim contiguous either way.
        var logits = axis == 2 ? randn([b, s, v], generator: g) * 3 : (randn([b, s, v], generator: g) * 3).permute(0, 2, 1);
        var targets = randint(0, v, [s, b], ScalarType.Int64, generator: g).t();       // a transposed view, [b, s]
        if (int32) targets = targets.to_type(ScalarType.Int32);
        var loss = RowKernels.CrossEntropy(logits, targets, axis, zLoss);
        Assert.NotNull(loss);
        var expected = Rt.CrossEntropyComposite(logits, targets, axis, zLoss);
        Assert.True(loss.allclose(expected, rtol: 1e-5, atol: 1e-5), $"max difference {(loss - expected).abs().max().item<float>()}");

        var dy = full([1], 0.37f).expand(b, s);
        var dx = RowKernels.CrossEntropyGrad(dy, logits, targets, axis, zLoss);
        Assert.NotNull(dx);
        var expectedDx = Rt.CrossEntropyGradComposite(dy, logits, targets, axis, zLoss);
        Assert.True(dx.allclose(expectedDx, rtol: 1e-5, atol: 1e-6), $"max difference {(dx - expectedDx).abs().max().item<float>()}");
        // Rows sum to dy · 2z·lse (the softmax part sums to dy·(1 + 2z·lse), the target's class loses dy).
        var lse = logits.logsumexp(axis);
        Assert.True(dx.sum(axis).allclose(dy * lse * (2 * zLoss), rtol: 1e-4, atol: 1e-5));

        // The class dim not contiguous: declined, and Rt's composite answers instead.
        var strided = axis == 2 ? randn([b, v, s], generator: g).permute(0, 2, 1) : randn([b, v, s], generator: g);
        Assert.Null(RowKernels.CrossEntropy(strided, targets, axis, zLoss));
        Assert.Null(RowKernels.CrossEntropyGrad(dy, strided, targets, axis, zLoss));
        Assert.True(Rt.CrossEntropy(strided, targets, axis, zLoss).allclose(Rt.CrossEntropyComposite(strided, targets, axis, zLoss)));
    }

    [Fact]
    public void ACrossEntropyTargetOutsideTheClassesIsAnError()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var logits = randn(2, 3, 5);
        var targets = tensor(new long[] { 0, 1, 4, 2, 5, 3 }).reshape(2, 3);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => RowKernels.CrossEntropy(logits, targets, 2, 0));
        Assert.Contains("target 5 is outside [0, 5)", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => RowKernels.CrossEntropyGrad(ones(2, 3), logits, targets - 6, 2, 0));
    }
}
