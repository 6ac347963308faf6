using PaLM.Perf;
using PaLM.Runtime;

namespace PaLM.Perf.Tests;

/// <summary>
/// The matmul tuner's stored choices: kept per machine across instances (processes), merged when two write, ignored
/// when stale, damaged or naming an unknown kernel, and always written whole.
/// </summary>
public sealed class GemmTuningCacheTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("palmc-gemm-").FullName;
    private static readonly DateTimeOffset Now = new(2026, 12, 6, 9, 0, 0, TimeSpan.Zero);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private GemmTuningCache Cache(string machine = "machine A", DateTimeOffset? now = null) => new(_dir, machine, () => now ?? Now);

    private static StoredGemmChoice Choice(GemmKernel kernel, DateTimeOffset at) =>
        new(kernel, new Dictionary<GemmKernel, double> { [GemmKernel.Blas] = 0.0101, [GemmKernel.Packed] = 0.0099, [GemmKernel.Dealt] = double.PositiveInfinity }, at);

    [Fact]
    public void AChoiceIsReadBackByAnotherInstanceOnTheSameMachineOnly()
    {
        Cache().Put("1x2048x768x7040 row,row t2", Choice(GemmKernel.Packed, Now.AddHours(-1)));
        var back = Cache().TryGet("1x2048x768x7040 row,row t2");
        Assert.NotNull(back);
        Assert.Equal(GemmKernel.Packed, back.Kernel);
        Assert.Equal(Now.AddHours(-1), back.MeasuredAt);
        // The infinite time (a kernel that was not a candidate) is not stored.
        Assert.Equal([GemmKernel.Blas, GemmKernel.Packed], back.BestSeconds.Keys.Order());
        Assert.Equal(0.0099, back.BestSeconds[GemmKernel.Packed]);
        Assert.Null(Cache().TryGet("1x2048x768x7040 row,row t1"));
        Assert.Null(Cache("machine B").TryGet("1x2048x768x7040 row,row t2"));
        Assert.NotEqual(Cache().Path, Cache("machine B").Path);
    }

    [Fact]
    public void TwoWritersKeepEachOthersChoices()
    {
        var first = Cache();
        var second = Cache();
        Assert.Null(first.TryGet("a"));
        Assert.Null(second.TryGet("b"));
        first.Put("a", Choice(GemmKernel.Blas, Now));
        second.Put("b", Choice(GemmKernel.Dealt, Now));
        var third = Cache();
        Assert.Equal(GemmKernel.Blas, third.TryGet("a")?.Kernel);
        Assert.Equal(GemmKernel.Dealt, third.TryGet("b")?.Kernel);
    }

    [Fact]
    public void StaleChoicesAreMeasuredAgain()
    {
        Cache().Put("old", Choice(GemmKernel.Blas, Now - GemmTuningCache.MaxAge - TimeSpan.FromMinutes(1)));
        Cache().Put("recent", Choice(GemmKernel.Blas, Now - GemmTuningCache.MaxAge + TimeSpan.FromMinutes(1)));
        Cache().Put("future", Choice(GemmKernel.Blas, Now + TimeSpan.FromHours(1)));
        Assert.Null(Cache().TryGet("old"));
        Assert.NotNull(Cache().TryGet("recent"));
        Assert.Null(Cache().TryGet("future"));
    }

    [Theory]
    [InlineData("{ not json")]
    [InlineData("")]
    [InlineData("{\"choices\": {\"x\": {\"kernel\": \"no-such-kernel\", \"measured_at\": \"2026-12-06T08:00:00+00:00\"}}}")]
    [InlineData("{\"choices\": {\"x\": null}}")]
    public void ADamagedFileReadsAsEmptyAndIsRewrittenWhole(string contents)
    {
        var cache = Cache();
        Directory.CreateDirectory(Path.GetDirectoryName(cache.Path)!);
        File.WriteAllText(cache.Path, contents);
        Assert.Null(cache.TryGet("x"));
        cache.Put("y", Choice(GemmKernel.Dealt, Now));
        Assert.Equal(GemmKernel.Dealt, Cache().TryGet("y")?.Kernel);
        Assert.Null(Cache().TryGet("x"));
        Assert.Equal([cache.Path], Directory.GetFiles(_dir));
    }

    [Fact]
    public void AnUnwritableFolderDropsTheChoiceWithoutFailing()
    {
        var file = Path.Combine(_dir, "not-a-folder");
        File.WriteAllText(file, "");
        var cache = new GemmTuningCache(file, "machine A", () => Now);
        cache.Put("a", Choice(GemmKernel.Blas, Now));
        Assert.Null(new GemmTuningCache(file, "machine A", () => Now).TryGet("a"));
    }

    [Fact]
    public void TheMachineKeyNamesTheKernelsBlasAndCpu()
    {
        var key = GemmTuningCache.MachineKey();
        Assert.Contains(string.Join(",", Gemm.Kernels.Select(Gemm.Name)), key);
        Assert.Contains(PeakFlops.ThisDevice().Model, key);
    }
}
