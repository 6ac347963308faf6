using PaLM.Runtime;
using static TorchSharp.torch;
using static PaLM.Runtime.Tests.TestUtil;

namespace PaLM.Runtime.Tests;

/// <summary>
/// The matmul kernels and their tuning: oneDNN's convolution form, dealt and packed BLAS equal BLAS over random shapes and
/// layouts, and a large product is measured on every kernel, then settles on one, with every call's result equal to
/// BLAS's.
/// </summary>
public sealed class GemmTests
{
    public GemmTests() => Init();

    private static Tensor Matrix(int seed, long rows, long cols, bool rowMajor) =>
        rowMajor ? Randn(seed, rows, cols) : Randn(seed, cols, rows).t();

    public static TheoryData<GemmKernel, int> KernelsAndSeeds()
    {
        var data = new TheoryData<GemmKernel, int>();
        foreach (var kernel in (GemmKernel[])[GemmKernel.OneDnn, GemmKernel.Dealt, GemmKernel.Packed])
            for (int seed = 1; seed <= 6; seed++) data.Add(kernel, seed);
        return data;
    }

    [Theory]
    [MemberData(nameof(KernelsAndSeeds))]
    public void KernelsEqualBlasOverShapesAndLayouts(GemmKernel kernel, int seed)
    {
        using var scope = Rt.Scope();
        var rng = new Random(seed);
        // Odd sizes, a single row and a single column; for the dealt and packed kernels both orientations of the cut
        // (rows where M ≥ N, columns otherwise; the packed kernel packs the second operand or the first).
        long m = seed == 5 ? 1 : rng.Next(1, 300), k = rng.Next(1, 300), n = seed == 6 ? 1 : rng.Next(1, 300);
        var a = Matrix(seed, m, k, rowMajor: seed % 2 == 0);
        var b = Matrix(seed + 100, k, n, rowMajor: seed % 3 != 0);
        var c = Gemm.Run(kernel, a, b);
        Assert.Equal([m, n], c.shape);
        Assert.True(c.is_contiguous(), "row-major like BLAS's result");
        AssertClose(a.mm(b), c, rtol: 1e-4, atol: 1e-4);
        // The pieces depend only on the shape and the thread count: a second run gives the same bits.
        if (kernel != GemmKernel.OneDnn) Assert.True(Gemm.Run(kernel, a, b).eq(c).all().item<bool>(), "the same bits on every run");
        // A batch: one grouped convolution on oneDNN (a group per matrix), a product in pieces per matrix otherwise.
        var batch = rng.Next(1, 5);
        var ab = Randn(seed + 200, batch, m, k);
        var bb = seed % 2 == 0 ? Randn(seed + 300, batch, k, n) : Randn(seed + 300, batch, n, k).transpose(1, 2);
        var cb = Gemm.Run(kernel, ab, bb);
        Assert.Equal([batch, m, n], cb.shape);
        AssertClose(ab.bmm(bb), cb, rtol: 1e-4, atol: 1e-4);
        // An operand with no unit stride is copied first.
        var strided = Randn(seed + 400, m, 2 * k)[.., TensorIndex.Slice(0, 2 * k, 2)];
        AssertClose(strided.mm(b), Gemm.Run(kernel, strided, b), rtol: 1e-4, atol: 1e-4);
    }

    /// <summary>The pieces write only their part of a wider destination (a slice of a larger result, as
    /// <see cref="Contraction.TryRunInto"/> hands them), cut along rows or columns.</summary>
    [Theory]
    [InlineData(false, 301, 64, 17)]     // rows
    [InlineData(false, 17, 64, 301)]     // columns
    [InlineData(false, 2, 5, 1)]
    [InlineData(true, 301, 64, 17)]      // rows: the second operand packed
    [InlineData(true, 17, 64, 301)]      // columns: the first operand packed
    [InlineData(true, 2, 5, 1)]
    public unsafe void PiecesWriteOnlyTheirSliceOfAWiderResult(bool packed, long m, long k, long n)
    {
        using var scope = Rt.Scope();
        var a = Randn(11, m, k);
        var y = Randn(12, n, k);                                   // the second operand transposed, as Sgemm takes it
        var wide = full(new long[] { m, n + 9 }, float.NaN);
        var slice = wide.narrow(1, 4, n);
        float* ap = (float*)Native.TensorMemory.FirstElement(a), yp = (float*)Native.TensorMemory.FirstElement(y);
        float* cp = (float*)Native.TensorMemory.FirstElement(slice);
        if (packed) Native.DealtSgemm.RunPacked(m, n, k, ap, k, 1, yp, k, 1, cp, n + 9, threads: 2);
        else Native.DealtSgemm.Run(m, n, k, ap, k, 1, yp, k, 1, cp, n + 9, threads: 2);
        AssertClose(a.mm(y.t()), slice, rtol: 1e-4, atol: 1e-4);
        Assert.True(wide.narrow(1, 0, 4).isnan().all().item<bool>() && wide.narrow(1, 4 + n, 5).isnan().all().item<bool>(),
            "nothing outside the slice written");
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
        Assert.False(choice.Into);
        Assert.NotNull(choice.Kernel);
        Assert.Equal(Enum.GetValues<GemmKernel>(), choice.BestSeconds.Keys.Order());
        // Measured on the first call; every call, the first included, then ran on the choice and only on it.
        Assert.Equal(calls, choice.Calls[choice.Kernel.Value]);
        Assert.Equal(calls, choice.TotalCalls);
        Assert.Equal(choice.BestSeconds.MinBy(p => p.Value).Key, choice.Kernel);
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
        Assert.Equal(4, choice.TotalCalls);
        Assert.Equal(4, choice.Calls[choice.Kernel!.Value]);
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

    /// <summary>A large product written into a slice of a wider result (the backward's joined products) is tuned between
    /// the kernels that can write there, BLAS, dealt and packed BLAS, and every call's result matches the product.</summary>
    [Fact]
    public void AProductIntoASliceIsTunedBetweenTheKernelsThatWriteInPlace()
    {
        using var scope = Rt.Scope();
        long m = 520, k = 768, n = 1030;
        Assert.True(2.0 * m * k * n >= Gemm.MinFlops);
        var x = Randn(13, m, k);
        var w = Randn(14, n, k);
        Assert.True(Contraction.TryParse("mk,nk->mn", out var c));
        var wide = full(new long[] { m, n + 3 }, float.NaN);
        const int calls = 3;
        for (int i = 0; i < calls; i++)
        {
            using var slice = wide.narrow(1, 3, n);
            Assert.True(c.TryRunInto(x, w, slice));
            AssertClose(x.mm(w.t()), slice, rtol: 1e-4, atol: 1e-4);
        }
        Assert.True(wide.narrow(1, 0, 3).isnan().all().item<bool>());
        var choice = Assert.Single(Gemm.Choices, ch => ch.Into && ch.M == m && ch.K == k && ch.N == n);
        Assert.Equal([GemmKernel.Blas, GemmKernel.Dealt, GemmKernel.Packed], choice.BestSeconds.Keys.Order());
        Assert.Equal(calls, choice.Calls[choice.Kernel!.Value]);
        Assert.Equal(calls, choice.TotalCalls);
    }

    /// <summary>A store that answers from what a test gave it and records what it is given.</summary>
    private sealed class RecordingStore(Dictionary<string, StoredGemmChoice> seeded) : IGemmTuningStore
    {
        public readonly System.Collections.Concurrent.ConcurrentDictionary<string, StoredGemmChoice> Puts = new();

        public StoredGemmChoice? TryGet(string signature) => seeded.GetValueOrDefault(signature);

        public void Put(string signature, StoredGemmChoice choice) => Puts[signature] = choice;
    }

    private static T WithStore<T>(IGemmTuningStore store, Func<T> body)
    {
        var previous = Gemm.Store;
        Gemm.Store = store;
        try { return body(); }
        finally { Gemm.Store = previous; }
    }

    /// <summary>A signature the store has a choice for runs that kernel from its first call, with no trial calls, and
    /// reports the stored times and when they were measured; a new signature is measured and its choice stored.</summary>
    [Fact]
    public void AStoredChoiceRunsFromTheFirstCallAndANewOneIsStored()
    {
        using var scope = Rt.Scope();
        long m = 544, k = 768, n = 1056, m2 = 560;
        var threads = get_num_threads();
        var at = new DateTimeOffset(2026, 12, 1, 12, 0, 0, TimeSpan.Zero);
        var storedTimes = new Dictionary<GemmKernel, double> { [GemmKernel.Blas] = 0.003, [GemmKernel.Dealt] = 0.002 };
        var store = new RecordingStore(new()
        {
            [$"1x{m}x{k}x{n} row,col-strided t{threads}"] = new StoredGemmChoice(GemmKernel.Dealt, storedTimes, at),
        });
        var a = Matrix(21, m, k, rowMajor: true);
        var b = Matrix(22, k, n, rowMajor: false);
        var a2 = Matrix(23, m2, k, rowMajor: true);
        const int calls = 3;
        WithStore(store, () =>
        {
            for (int i = 0; i < calls; i++)
            {
                AssertClose(a.mm(b), Gemm.Matmul(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0), rtol: 1e-4, atol: 1e-4);
                AssertClose(a2.mm(b), Gemm.Matmul(a2.unsqueeze(0), b.unsqueeze(0)).squeeze(0), rtol: 1e-4, atol: 1e-4);
            }
            return 0;
        });

        var stored = Assert.Single(Gemm.Choices, c => c.M == m && c.K == k && c.N == n && !c.BRowMajor);
        Assert.Equal(GemmKernel.Dealt, stored.Kernel);
        Assert.Equal(at, stored.StoredAt);
        Assert.Equal(storedTimes.OrderBy(p => p.Key), stored.BestSeconds.OrderBy(p => p.Key));
        Assert.Equal(calls, stored.Calls[GemmKernel.Dealt]);
        Assert.Equal(calls, stored.TotalCalls);
        Assert.DoesNotContain($"1x{m}x{k}x{n} row,col-strided t{threads}", store.Puts.Keys);

        var measured = Assert.Single(Gemm.Choices, c => c.M == m2 && c.K == k && c.N == n && !c.BRowMajor);
        Assert.Null(measured.StoredAt);
        var put = store.Puts[$"1x{m2}x{k}x{n} row,col-strided t{threads}"];
        Assert.Equal(measured.Kernel, put.Kernel);
        Assert.Equal(measured.BestSeconds.OrderBy(p => p.Key), put.BestSeconds.OrderBy(p => p.Key));
    }

    /// <summary>A stored kernel the product cannot run on (oneDNN for a product written into a slice) is ignored: the
    /// product is measured between the kernels that can, and that choice replaces it.</summary>
    [Fact]
    public void AStoredKernelThatCannotWriteInPlaceIsMeasuredAgain()
    {
        using var scope = Rt.Scope();
        long m = 536, k = 768, n = 1034;
        var key = $"1x{m}x{k}x{n} row,col into t{get_num_threads()}";
        var store = new RecordingStore(new() { [key] = new StoredGemmChoice(GemmKernel.OneDnn, new Dictionary<GemmKernel, double>(), DateTimeOffset.UtcNow) });
        var x = Randn(24, m, k);
        var w = Randn(25, n, k);
        Assert.True(Contraction.TryParse("mk,nk->mn", out var c));
        var wide = full(new long[] { m, n + 2 }, float.NaN);
        WithStore(store, () =>
        {
            using var slice = wide.narrow(1, 2, n);
            Assert.True(c.TryRunInto(x, w, slice));
            AssertClose(x.mm(w.t()), slice, rtol: 1e-4, atol: 1e-4);
            return 0;
        });
        var choice = Assert.Single(Gemm.Choices, ch => ch.Into && ch.M == m && ch.K == k && ch.N == n);
        Assert.Null(choice.StoredAt);
        Assert.Equal([GemmKernel.Blas, GemmKernel.Dealt, GemmKernel.Packed], choice.BestSeconds.Keys.Order());
        Assert.Equal(choice.Kernel, store.Puts[key].Kernel);
    }
}
