using PaLM.Runtime;
using static TorchSharp.torch;
using static PaLM.Runtime.Tests.TestUtil;

namespace PaLM.Runtime.Tests;

/// <summary>
/// The matmul kernels and their tuning: oneDNN's convolution form equals BLAS over random shapes and layouts, and a
/// large product is measured on both kernels, then settles on one, with every call's result equal to BLAS's.
/// </summary>
public sealed class GemmTests
{
    public GemmTests() => Init();

    private static Tensor Matrix(int seed, long rows, long cols, bool rowMajor) =>
        rowMajor ? Randn(seed, rows, cols) : Randn(seed, cols, rows).t();

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(6)]
    public void OneDnnEqualsBlasOverShapesAndLayouts(int seed)
    {
        using var scope = Rt.Scope();
        var rng = new Random(seed);
        long m = rng.Next(1, 300), k = rng.Next(1, 300), n = rng.Next(1, 300);
        var a = Matrix(seed, m, k, rowMajor: seed % 2 == 0);
        var b = Matrix(seed + 100, k, n, rowMajor: seed % 3 != 0);
        var c = Gemm.Run(GemmKernel.OneDnn, a, b);
        Assert.Equal([m, n], c.shape);
        Assert.True(c.is_contiguous(), "row-major like BLAS's result");
        AssertClose(a.mm(b), c, rtol: 1e-4, atol: 1e-4);
        // A batch runs as one grouped convolution, a group per matrix.
        var batch = rng.Next(1, 5);
        var ab = Randn(seed + 200, batch, m, k);
        var bb = seed % 2 == 0 ? Randn(seed + 300, batch, k, n) : Randn(seed + 300, batch, n, k).transpose(1, 2);
        var cb = Gemm.Run(GemmKernel.OneDnn, ab, bb);
        Assert.Equal([batch, m, n], cb.shape);
        AssertClose(ab.bmm(bb), cb, rtol: 1e-4, atol: 1e-4);
    }

    [Fact]
    public void ALargeProductIsTunedOnFirstSightThenRunsOnItsChoice()
    {
        using var scope = Rt.Scope();
        // 2·M·K·N = 2·512·768·1024 ≈ 8e8 FLOPs: above the tuning threshold. A transposed B as the backward's weights are.
        long m = 512, k = 768, n = 1024;
        Assert.True(2.0 * m * k * n >= Gemm.MinFlops);
        var a = Matrix(7, m, k, rowMajor: true);
        var b = Matrix(8, k, n, rowMajor: false);
        var expected = a.mm(b);
        const int calls = 5;
        for (int i = 0; i < calls; i++)
            AssertClose(expected, Gemm.Matmul(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0), rtol: 1e-4, atol: 1e-4);
        var choice = Assert.Single(Gemm.Choices, c => c.Batch == 1 && c.M == m && c.K == k && c.N == n && c.ARowMajor && !c.BRowMajor);
        Assert.NotNull(choice.Kernel);
        Assert.NotNull(choice.BlasSeconds);
        Assert.NotNull(choice.OneDnnSeconds);
        // Measured on the first call; every call, the first included, then ran on the choice and only on it.
        Assert.Equal(calls, choice.Kernel == GemmKernel.OneDnn ? choice.OneDnnCalls : choice.BlasCalls);
        Assert.Equal(0, choice.Kernel == GemmKernel.OneDnn ? choice.BlasCalls : choice.OneDnnCalls);
        Assert.Equal(choice.OneDnnSeconds < choice.BlasSeconds ? GemmKernel.OneDnn : GemmKernel.Blas, choice.Kernel);
    }

    [Fact]
    public void DevicesCallingAtOnceGetOneChoice()
    {
        // Four threads (as in-process devices) hit a new signature together: one measures, the others wait, and all
        // run the same kernel, so replicated products stay bitwise equal.
        using var scope = Rt.Scope();
        long m = 640, k = 512, n = 1024;
        var a = Matrix(9, m, k, rowMajor: true).unsqueeze(0);
        var b = Matrix(10, k, n, rowMajor: true).unsqueeze(0);
        var results = new Tensor[4];
        Parallel.For(0, 4, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            using var s = Rt.Scope();
            results[i] = Gemm.Matmul(a, b).MoveToOuterDisposeScope();
        });
        var choice = Assert.Single(Gemm.Choices, c => c.M == m && c.K == k && c.N == n);
        Assert.Equal(4, choice.BlasCalls + choice.OneDnnCalls);
        Assert.True(choice.BlasCalls == 0 || choice.OneDnnCalls == 0);
        foreach (var r in results[1..]) Assert.True(r.eq(results[0]).all().item<bool>(), "bitwise equal across devices");
    }

    [Fact]
    public void SmallAndBroadcastProductsAreNotTuned()
    {
        using var scope = Rt.Scope();
        var small = Gemm.Matmul(Randn(1, 1, 16, 32), Randn(2, 1, 32, 8));
        var broadcast = Gemm.Matmul(Randn(3, 4, 512, 768), Randn(4, 1, 768, 1024));
        Assert.Equal([1, 16, 8], small.shape);
        Assert.Equal([4, 512, 1024], broadcast.shape);
        Assert.DoesNotContain(Gemm.Choices, c => c.M == 16 || c.Batch == 4 && c.M == 512 && c.N == 1024);
    }
}
