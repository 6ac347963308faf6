using PaLM.Passes;

namespace PaLM.Perf.Tests;

/// <summary>
/// The benchmark on palm-tiny: the generated and eager steps run alternately from the same weights on the same batches
/// (so their losses agree step by step), and the report's derived figures follow from its measurements.
/// </summary>
public sealed class StepBenchTests
{
    [Fact]
    public void GeneratedAndEagerAlternateWithTheSameLosses()
    {
        var r = StepBench.Run(TestPaths.Graph("palm-tiny"), null, new TrainingConfig(),
            new BenchOptions { Steps = 6, Warmup = 2, VsEager = true, PeakSizes = [256], PeakRepetitions = 3 });
        Assert.Equal(8, r.Losses.Count);
        Assert.Equal(8, r.EagerLosses!.Count);
        for (int i = 0; i < r.Losses.Count; i++)
            Assert.True(Math.Abs(r.Losses[i] - r.EagerLosses[i]) <= 1e-5 * Math.Abs(r.Losses[i]), $"step {i + 1}: generated {r.Losses[i]}, eager {r.EagerLosses[i]}");
        Assert.Equal(6, r.Generated.Samples.Count);
        Assert.Equal(6, r.Eager!.Samples.Count);
        Assert.Equal(6, r.Ratios!.Count);
        Assert.Equal(r.Generated.Median / r.Eager.Median, r.Ratio!.Value, 12);
        Assert.Equal(128 / r.Generated.Median, r.TokensPerSecond, 6);
        Assert.Equal((double)r.Flops.ModelFlopsPerStep! / r.Generated.Median / r.Peak.Flops, r.Mfu!.Value, 12);
        Assert.Equal(r.Mfu, r.Hfu);                                  // no remat: nothing recomputed
        Assert.InRange(r.Mfu!.Value, 1e-4, 1.0);
        Assert.Single(r.Peak.Samples);
        Assert.Equal(3, r.Peak.Samples[0].Repetitions);
        Assert.True(r.Peak.Samples[0].BestFlops >= r.Peak.Samples[0].MedianFlops);
        Assert.Null(r.Nominal);                                      // a CPU's datasheet peak is not guessed
        Assert.Equal(8, r.ResidentAfterStep.Count);
        Assert.True(r.PeakResidentBytes >= r.ResidentAfterStep.Max());
    }

    /// <summary>
    /// On a mesh the eager peer starts from the whole tensors the devices' pieces are cut from (<c>Shards.InitWhole</c>),
    /// so its losses agree with the partitioned program's step by step, as on one device (they differed from the first
    /// step when it started from weights of its own).
    /// </summary>
    [Fact]
    public void OnAMeshTheEagerPeerComputesTheSameSteps()
    {
        var r = StepBench.Run(TestPaths.Graph("palm-tiny"), PaLM.IR.Mesh.Parse("data=2,model=2"), new TrainingConfig(),
            new BenchOptions { Steps = 2, Warmup = 1, VsEager = true, PeakSizes = [128], PeakRepetitions = 1 });
        Assert.Equal(3, r.EagerLosses!.Count);
        for (int i = 0; i < r.Losses.Count; i++)
            Assert.True(Math.Abs(r.Losses[i] - r.EagerLosses[i]) <= 1e-5 * Math.Abs(r.Losses[i]), $"step {i + 1}: generated {r.Losses[i]}, eager {r.EagerLosses[i]}");
    }

    /// <summary>
    /// --warmup auto: at least the least warm-up, ended when .NET stops compiling methods or by the longest warm-up;
    /// then exactly the timed steps on both sides, and a profile of the timed steps only.
    /// </summary>
    [Fact]
    public void SettledWarmupThenExactlyTheTimedSteps()
    {
        var r = StepBench.Run(TestPaths.Graph("palm-tiny"), null, new TrainingConfig(),
            new BenchOptions { Steps = 3, Warmup = 2, SettleJit = true, MaxWarmupSeconds = 10, VsEager = true, Profile = true, PeakSizes = [128], PeakRepetitions = 1 });
        Assert.True(r.WarmupSteps >= 2);
        Assert.NotNull(r.JitSettled);     // either way: other tests compile methods in this process too
        Assert.Equal(r.WarmupSteps + 3, r.Losses.Count);
        Assert.Equal(r.WarmupSteps + 3, r.EagerLosses!.Count);
        Assert.Equal(3, r.Generated.Samples.Count);
        Assert.Equal(3, r.Eager!.Samples.Count);
        Assert.Contains(r.Profile!.Sites, s => !s.InLoop && r.Profile.Calls(s.Id) == 3);
        Assert.All(r.Profile.Sites, s => Assert.True(r.Profile.Calls(s.Id) % 3 == 0, $"{s.Op} {s.Name}: {r.Profile.Calls(s.Id)} calls over 3 steps"));

        // The longest warm-up bounds it: with none allowed, it is the least.
        var fixedLength = StepBench.Run(TestPaths.Graph("palm-tiny"), null, new TrainingConfig(),
            new BenchOptions { Steps = 2, Warmup = 1, SettleJit = true, MaxWarmupSeconds = 0, PeakSizes = [128], PeakRepetitions = 1 });
        Assert.Equal(1, fixedLength.WarmupSteps);
        Assert.False(fixedLength.JitSettled);
        Assert.Equal(3, fixedLength.Losses.Count);
    }

    [Fact]
    public void ProfileTimesEveryOpOfTheGeneratedStep()
    {
        var r = StepBench.Run(TestPaths.Graph("palm-tiny"), null, new TrainingConfig { Remat = RematPolicy.Full },
            new BenchOptions { Steps = 3, Warmup = 1, Profile = true, PeakSizes = [128], PeakRepetitions = 1 });
        var p = r.Profile!;
        Assert.NotEmpty(p.Sites);
        // Loop bodies run once per layer per step, top-level ops once per step.
        Assert.Contains(p.Sites, s => s.InLoop && p.Calls(s.Id) == 3 * 2);
        Assert.Contains(p.Sites, s => !s.InLoop && p.Calls(s.Id) == 3);
        Assert.All(p.Sites, s => Assert.True(p.Calls(s.Id) > 0, $"{s.Op} {s.Name} never ran"));
        Assert.True(p.TotalSeconds > 0 && p.TotalSeconds <= r.Generated.Samples.Sum());
        Assert.Contains(p.Sites, s => s.IsMatmul && s.Flops > 0);
        Assert.True(r.Hfu > r.Mfu, "remat full recomputes: HFU exceeds MFU");
    }

    [Fact]
    public void NominalPeaksAreKnownOnlyFromTheTable()
    {
        Assert.Equal(275e12, PeakFlops.Nominal("tpu-v4", "bf16")!.Flops);
        Assert.Null(PeakFlops.Nominal("tpu-v4", "f32"));
        Assert.Null(PeakFlops.Nominal("cpu", "f32"));
        Assert.Equal(989e12, PeakFlops.Nominal("H100-SXM", "bf16")!.Flops);
    }

    [Fact]
    public void TimingStatistics()
    {
        var t = new Timing([4.0, 1.0, 3.0, 2.0]);
        Assert.Equal(2.5, t.Median);
        Assert.Equal(1.0, t.Min);
        Assert.Equal(4.0, t.Max);
        Assert.Equal((3.25 - 1.75) / 2.5, t.RelativeSpread, 12);
    }
}

/// <summary><see cref="SingleDeviceStep.SettleJit"/>, the BenchmarkDotNet suite's warm-up: it ends once .NET stops
/// compiling methods, well before its cap on palm-tiny, and leaves both sides training alike.</summary>
public sealed class SettleJitTests
{
    [Fact]
    public void SettlingEndsWhenTheJitIsQuietAndKeepsBothSidesInStep()
    {
        using var step = new SingleDeviceStep(PaLM.Dsl.Frontend.CompileFile(TestPaths.Graph("palm-tiny")));
        var cap = TimeSpan.FromSeconds(120);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int pairs = step.SettleJit(cap);
        Assert.True(clock.Elapsed < cap, $"the JIT did not settle in {cap.TotalSeconds} s ({pairs} pairs of steps)");
        Assert.True(pairs >= 3, $"settled after {pairs} pairs: at least two quiet ones after the first");
        // Both sides took the same steps on the same batches: their losses still agree (to float drift over the steps).
        double generated = step.Generated(), eager = step.Eager();
        Assert.True(Math.Abs(generated - eager) <= 2e-3 * Math.Abs(eager), $"after {pairs} pairs: generated loss {generated}, eager {eager}");
    }
}
