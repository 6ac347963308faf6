using PaLM.Perf;
using PaLM.Runtime;
using TorchSharp;

namespace PaLM.Perf.Tests;

/// <summary>
/// The stored peak: measured and stored on first use, reused after a short check that does not beat it, measured
/// again when the check beats it (the stored figure understated the machine), when it is stale or unreadable.
/// </summary>
public sealed class PeakCacheTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("palmc-peak-").FullName;
    private static readonly long[] Sizes = [128];
    private const int Reps = 3;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private PeakResult Obtain(PeakCache cache) => PeakFlops.MeasureOrReuse(torch.ScalarType.Float32, Sizes, Reps, cache);

    private static PeakMeasurement Fake(double flops) =>
        new("f32", torch.get_num_threads(), [new PeakSample(128, flops, flops, Reps)], 0.1);

    [Fact]
    public void StoredOnFirstUseThenReusedAfterACheck()
    {
        Rt.Initialize();
        var cache = new PeakCache(_dir);
        var first = Obtain(cache);
        Assert.False(first.FromCache);
        Assert.Null(first.Check);
        // Store a peak no check can beat: the next run must use it, with its check reported.
        cache.Put(new CachedPeak(Fake(1e15), DateTimeOffset.UtcNow), Sizes, Reps);
        var second = Obtain(cache);
        Assert.True(second.FromCache);
        Assert.Equal(1e15, second.Peak.Flops);
        Assert.NotNull(second.Check);
        Assert.True(second.SecondsThisRun < first.Peak.Seconds + second.Check!.Seconds + 1e-9);
    }

    [Fact]
    public void TheCheckRunsOnlyTheKernelThatSetTheStoredPeak()
    {
        Rt.Initialize();
        var cache = new PeakCache(_dir);
        foreach (var kernel in Gemm.Kernels)
        {
            var stored = new PeakMeasurement("f32", torch.get_num_threads(), [new PeakSample(128, 1e15, 1e15, Reps, Gemm.Name(kernel))], 0.1);
            cache.Put(new CachedPeak(stored, DateTimeOffset.UtcNow), Sizes, Reps);
            var r = Obtain(cache);
            Assert.True(r.FromCache);
            Assert.Equal(Gemm.Name(kernel), Assert.Single(r.Check!.Samples).Kernel);
            Assert.Equal([kernel], PeakFlops.CheckKernels(stored, 128));
        }
        // A kernel the generated code cannot choose (or none recorded at that size): the check times every kernel.
        var other = new PeakMeasurement("f32", torch.get_num_threads(), [new PeakSample(128, 1e15, 1e15, Reps, "no-such-kernel")], 0.1);
        Assert.Null(PeakFlops.CheckKernels(other, 128));
        Assert.Null(PeakFlops.CheckKernels(other, 256));
    }

    [Fact]
    public void AStoredPeakBelowThisRunsCheckIsMeasuredAgain()
    {
        Rt.Initialize();
        var cache = new PeakCache(_dir);
        cache.Put(new CachedPeak(Fake(1.0), DateTimeOffset.UtcNow), Sizes, Reps);    // 1 FLOP/s: any check beats it
        var r = Obtain(cache);
        Assert.False(r.FromCache);
        Assert.NotNull(r.Check);
        Assert.True(r.Peak.Flops > 1.0);
        var stored = cache.TryGet("f32", torch.get_num_threads(), Sizes, Reps, DateTimeOffset.UtcNow);
        Assert.Equal(r.Peak.Flops, stored!.Measurement.Flops);
    }

    [Fact]
    public void StaleOrDamagedEntriesAreNotUsed()
    {
        Rt.Initialize();
        var cache = new PeakCache(_dir);
        var threads = torch.get_num_threads();
        cache.Put(new CachedPeak(Fake(1e15), DateTimeOffset.UtcNow - PeakCache.MaxAge - TimeSpan.FromHours(1)), Sizes, Reps);
        Assert.Null(cache.TryGet("f32", threads, Sizes, Reps, DateTimeOffset.UtcNow));
        File.WriteAllText(cache.PathFor("f32", threads, Sizes, Reps), "{ not json");
        Assert.Null(cache.TryGet("f32", threads, Sizes, Reps, DateTimeOffset.UtcNow));
        var r = Obtain(cache);
        Assert.False(r.FromCache);
        Assert.NotNull(cache.TryGet("f32", threads, Sizes, Reps, DateTimeOffset.UtcNow));
        // Another protocol is another entry.
        Assert.NotEqual(cache.PathFor("f32", threads, Sizes, Reps), cache.PathFor("f32", threads, [256], Reps));
    }

    [Fact]
    public void ACheckWellBelowTheStoredPeakSaysTheMachineIsSlowNow()
    {
        // A check reads a little under a best of 20 on a quiet machine; one at half the stored peak (this VM's slow
        // phases) is flagged, and a peak measured in the run itself has no check to compare.
        static PeakMeasurement At(double gflops, int reps) => new("f32", 2, [new PeakSample(2048, gflops * 1e9, gflops * 1e9, reps)], 1.0);
        var stored = At(430, 20);
        Assert.False(new PeakResult(stored, FromCache: true, DateTimeOffset.UtcNow, At(410, 5)).MachineSlowerThanPeak);
        var slow = new PeakResult(stored, FromCache: true, DateTimeOffset.UtcNow, At(215, 5));
        Assert.True(slow.MachineSlowerThanPeak);
        Assert.Equal(0.5, slow.CheckRatio!.Value, 3);
        Assert.False(new PeakResult(stored, FromCache: false, DateTimeOffset.UtcNow, null).MachineSlowerThanPeak);
    }
}
