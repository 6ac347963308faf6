using System.Diagnostics;
using System.Runtime;
using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Reference;
using PaLM.Runtime;
using PaLM.Runtime.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Perf;

/// <summary>What to measure.</summary>
public sealed record BenchOptions
{
    /// <summary>Timed steps (each side, with <see cref="VsEager"/>).</summary>
    public int Steps { get; init; } = 10;

    /// <summary>
    /// Untimed steps first (each side): JIT, first-touch of memory, libtorch's lazy initialization. With
    /// <see cref="SettleJit"/>, the least number of them.
    /// </summary>
    public int Warmup { get; init; } = 2;

    /// <summary>
    /// Keep warming up past <see cref="Warmup"/> until .NET stops compiling methods (two steps, with their eager
    /// peers', and at least a second without one), for at most <see cref="MaxWarmupSeconds"/>. .NET compiles the
    /// runtime's kernels and the generated step unoptimized first and re-compiles them optimized after about 30 calls,
    /// so a fixed short warm-up times some of them unoptimized: palm-tiny's generated step read 1.7x its settled time
    /// after 5 warm-up steps.
    /// </summary>
    public bool SettleJit { get; init; }

    /// <summary>
    /// How long <see cref="SettleJit"/> may warm up before timing anyway (the report then says it did not settle):
    /// palm-tiny settles after about 200 steps (3 s), while palm-cpu's 2-second steps never read quiet for long
    /// (<c>docs/performance.md</c>), so the cap is in time, not steps.
    /// </summary>
    public double MaxWarmupSeconds { get; init; } = 30;

    /// <summary>Also run the eager TorchSharp training step, alternating with the generated one step by step.</summary>
    public bool VsEager { get; init; }

    /// <summary>Time every op of the generated step (compiled with profiling timers).</summary>
    public bool Profile { get; init; }

    /// <summary>Compile the step with donated parameters and optimizer state (updated in place, as `palmc train` runs it).</summary>
    public bool Donate { get; init; } = true;

    /// <summary>
    /// Where this machine's full peak measurement is kept between runs (null: measure it in every run). A stored
    /// peak is used only when this run's short check does not beat it (<see cref="PeakCache"/>).
    /// </summary>
    public PeakCache? PeakCache { get; init; } = PeakCache.Default;

    /// <summary>Where compiled programs are kept between runs (null: run Roslyn every time).</summary>
    public ProgramCache? ProgramCache { get; init; } = ProgramCache.Default;

    public IReadOnlyList<long> PeakSizes { get; init; } = PeakFlops.DefaultSizes;
    public int PeakRepetitions { get; init; } = PeakFlops.DefaultRepetitions;
    public long Seed { get; init; }
    public long DataSeed { get; init; } = 1;
    public ByteCorpus? Corpus { get; init; }
}

/// <summary>Compile time per phase, in seconds.</summary>
public sealed record CompilePhases(double Parse, double Autodiff, double Propagate, double Partition, double Passes, double Emit)
{
    public double Total => Parse + Autodiff + Propagate + Partition + Passes + Emit;
}

/// <summary>Median and spread of a set of timings, in seconds.</summary>
public sealed record Timing(IReadOnlyList<double> Samples)
{
    private double[] Sorted => [.. Samples.Order()];
    public double Median => Quantile(0.5);
    public double Min => Sorted[0];
    public double Max => Sorted[^1];

    /// <summary>Interquartile range over the median: the relative spread.</summary>
    public double RelativeSpread => Median == 0 ? 0 : (Quantile(0.75) - Quantile(0.25)) / Median;

    public double Quantile(double q)
    {
        var s = Sorted;
        if (s.Length == 0) return double.NaN;
        var pos = q * (s.Length - 1);
        int lo = (int)Math.Floor(pos), hi = (int)Math.Ceiling(pos);
        return s[lo] + (s[hi] - s[lo]) * (pos - lo);
    }
}

/// <summary>Everything one benchmark run measured.</summary>
public sealed record BenchReport
{
    public required string Graph { get; init; }
    public required string Mesh { get; init; }
    public required int Devices { get; init; }
    public required string Remat { get; init; }
    public required bool Fused { get; init; }
    public required string DType { get; init; }
    public required string Device { get; init; }
    public required long TokensPerStep { get; init; }
    public required StepFlops Flops { get; init; }
    public required PeakMeasurement Peak { get; init; }

    /// <summary>Whether <see cref="Peak"/> was measured in this run or stored from an earlier one (and this run's check).</summary>
    public PeakResult? PeakSource { get; init; }

    /// <summary>Whether the compiled program came from the persistent compilation cache (no Roslyn run).</summary>
    public bool ProgramFromCache { get; init; }
    public NominalPeak? Nominal { get; init; }
    public required CompilePhases Compile { get; init; }
    public required Timing Generated { get; init; }
    public Timing? Eager { get; init; }

    /// <summary>Per timed step: generated time over the eager time of the same step number.</summary>
    public IReadOnlyList<double>? Ratios { get; init; }

    public required IReadOnlyList<double> Losses { get; init; }
    public IReadOnlyList<double>? EagerLosses { get; init; }

    /// <summary>
    /// The largest |generated − eager| / |eager| loss over the steps both ran (null without the peer). Both start from
    /// the same weights and batches, so the first step differs by float rounding (about 1e-7) and later ones by that
    /// rounding compounded through the updates (palm-tiny: under 1e-5 over 8 steps; palm-cpu: 2e-4 over 11); a step
    /// that computed something else differs by far more from the first step on.
    /// </summary>
    public double? LossDifference => EagerLosses is { Count: > 0 } eager
        ? Losses.Zip(eager, (g, e) => Math.Abs(g - e) / Math.Max(Math.Abs(e), double.Epsilon)).Max()
        : null;

    /// <summary>Resident memory after each step (generated side), and the process's high-water mark.</summary>
    public required IReadOnlyList<long> ResidentAfterStep { get; init; }
    public required long PeakResidentBytes { get; init; }

    /// <summary>Per-device memory the plan accounts for (parameters, optimizer state, gradients, activations, inputs).</summary>
    public required TrainingMemory PlannedMemory { get; init; }

    public OpProfile? Profile { get; init; }
    public required double WallSeconds { get; init; }

    /// <summary>The warm-up steps run (each side), and whether .NET had stopped compiling methods by then (null: not asked).</summary>
    public required int WarmupSteps { get; init; }
    public bool? JitSettled { get; init; }

    /// <summary>Methods .NET compiled during the timed steps (0 when the warm-up settled and stayed so).</summary>
    public required long MethodsCompiledWhileTimed { get; init; }

    public double TokensPerSecond => TokensPerStep / Generated.Median;

    /// <summary>PaLM's MFU against the measured peak of the whole machine (null when model FLOPs are unknown).</summary>
    public double? Mfu => Flops.ModelFlopsPerStep / Generated.Median / Peak.Flops;

    public double? Hfu => Flops.HardwareFlopsPerStep / Generated.Median / Peak.Flops;

    public double? MfuNominal => Nominal is null ? null : Flops.ModelFlopsPerStep / Generated.Median / (Nominal.Flops * Devices);

    public double? EagerMfu => Eager is null ? null : Flops.ModelFlopsPerStep / Eager.Median / Peak.Flops;

    /// <summary>
    /// MFU against this run's check of a stored peak instead of the stored figure (null without a check): the same step
    /// over what the machine did in this run. The check is a best of few, so it can only read at or below the machine's
    /// peak at the time, and this figure at or above the MFU then; reports lead with <see cref="Mfu"/>, and this one says
    /// how much of a low MFU is the machine's phase rather than the step.
    /// </summary>
    public double? MfuAgainstCheck => PeakSource?.Check is { } c && c.Flops > 0 ? Flops.ModelFlopsPerStep / Generated.Median / c.Flops : null;

    public double? Ratio => Eager is null ? null : Generated.Median / Eager.Median;

    /// <summary>
    /// <see cref="Ratio"/> for a generated step at 100% MFU: the model's FLOPs at the measured peak over the eager
    /// step, which is the eager MFU. No program that does the model's FLOPs through these kernels gets below it, so
    /// it says how much of the gap to the peer is left to close (where the eager peer runs at 85% MFU, a ratio target
    /// of 0.85 cannot be met).
    /// </summary>
    public double? RatioAtPeak => EagerMfu;

    /// <summary>What the run spent outside its steps: compiling and the peak (the full protocol, or the check of a stored one).</summary>
    public double OverheadSeconds => Compile.Total + (PeakSource?.SecondsThisRun ?? Peak.Seconds);
}

/// <summary>Progress of a benchmark run: the phase and how far it is (0..1).</summary>
public sealed record BenchProgress(string Phase, double Fraction, string? Line = null);

/// <summary>
/// The benchmark behind <c>palmc bench</c>: compiles the training step (timing each phase), measures the matmul peak in
/// the same process, then runs warm-up and timed steps of the generated program and, with <see cref="BenchOptions.VsEager"/>,
/// of the eager TorchSharp peer (<see cref="EagerTrainer"/>), alternating step by step so both see the same machine
/// state; both sides use the same batches, dtype and threads.
/// </summary>
public static class StepBench
{
    /// <summary>The trainer's bound on a <see cref="BenchOptions.SettleJit"/> run, which ends by itself long before.</summary>
    private const long MaxSteps = 1_000_000;

    /// <summary>Parses <paramref name="path"/>, compiles its training step for <paramref name="mesh"/> and benchmarks it.</summary>
    public static BenchReport Run(string path, Mesh? mesh, TrainingConfig config, BenchOptions options, Action<BenchProgress>? progress = null)
    {
        var sw = Stopwatch.StartNew();
        var graph = Frontend.CompileFile(path);
        var parse = sw.Elapsed.TotalSeconds;
        RoslynCompiler.WarmUp();            // on the other core while the graph is transformed and emitted
        progress?.Invoke(new BenchProgress("compiling", 0));
        return Run(TrainingCompiler.Compile(graph, mesh, config), parse, options, progress);
    }

    /// <summary>Benchmarks an already compiled training step (<paramref name="parseSeconds"/>: what parsing its graph took).</summary>
    public static BenchReport Run(CompiledTraining compiled, double parseSeconds, BenchOptions options, Action<BenchProgress>? progress = null)
    {
        if (options.Steps < 1) throw new ArgumentOutOfRangeException(nameof(options), "at least one timed step");
        if (options.Warmup < 0) throw new ArgumentOutOfRangeException(nameof(options), "warm-up cannot be negative");
        var wall = Stopwatch.StartNew();
        var sw = Stopwatch.StartNew();
        var program = RoslynCompiler.CompileInMemory(Emitter.Emit(compiled.Local, options: new CodeGenOptions { Profile = options.Profile, DonateUpdatedArguments = options.Donate }),
            options.ProgramCache, out var programCached);
        var emit = sw.Elapsed.TotalSeconds;
        var phases = new CompilePhases(parseSeconds, compiled.AutodiffTime.TotalSeconds, compiled.Spmd.PropagateTime.TotalSeconds,
            compiled.Spmd.PartitionTime.TotalSeconds, compiled.PassesTime.TotalSeconds, emit);
        var flops = StepFlops.Of(compiled);
        var memory = TrainingMemory.Of(compiled);
        var dtype = program.Parameters.FirstOrDefault(p => p.Role == TensorRole.Parameter)?.DType ?? ScalarType.Float32;

        // The peak of the whole machine: several virtual devices share its cores, so they share its peak.
        Rt.Initialize();
        int callerThreads = torch.get_num_threads();
        torch.set_num_threads(Environment.ProcessorCount);
        progress?.Invoke(new BenchProgress("measuring peak", 0));
        var peakResult = PeakFlops.MeasureOrReuse(dtype, options.PeakSizes, options.PeakRepetitions, options.PeakCache,
            progress: f => progress?.Invoke(new BenchProgress("measuring peak", f)));
        var peak = peakResult.Peak;
        torch.set_num_threads(callerThreads);

        var corpus = options.Corpus ?? ByteCorpus.Default();
        if (options.SettleJit && !(options.MaxWarmupSeconds >= 0))
            throw new ArgumentOutOfRangeException(nameof(options), "the longest warm-up cannot be negative");
        // With SettleJit the trainer stops after the timed steps (StopAfter below); this only bounds it.
        long total = options.SettleJit ? MaxSteps : options.Warmup + options.Steps;
        var eager = options.VsEager ? CreateEager(program, options.Seed) : null;
        var eagerTimes = new List<double>();
        var eagerLosses = new List<double>();
        var resident = new List<long>();
        var tokensSpec = program.Inputs.First(i => i.Name == "tokens");
        // The last warm-up step: fixed, or (SettleJit) the first from options.Warmup on that ends a quiet stretch (see
        // JitSettling) or the longest warm-up. All of this runs on device 0's thread between steps while the others wait.
        long warmupEnd = options.SettleJit ? -1 : options.Warmup;
        bool? settled = options.SettleJit ? false : null;
        var jit = new JitSettling();
        long compiledAtWarmupEnd = jit.Compiled;
        var profile = options.Profile ? new OpProfile(program.ProfileSites) : null;
        var warming = Stopwatch.StartNew();
        BenchProgress Progress(StepReport s)
        {
            if (warmupEnd >= 0 && s.Step > warmupEnd)
                return new BenchProgress("steps", (double)(s.Step - warmupEnd) / options.Steps, s.Format());
            var warmed = options.SettleJit ? warming.Elapsed.TotalSeconds / Math.Max(1e-3, options.MaxWarmupSeconds) : (double)s.Step / Math.Max(1, options.Warmup);
            return new BenchProgress("warming up", Math.Min(1, warmed), s.Format());
        }
        try
        {
            progress?.Invoke(new BenchProgress(options.SettleJit ? "warming up" : "steps", 0));
            var result = Trainer.Run(program, new TrainerOptions
            {
                Steps = total, Corpus = corpus, Seed = options.Seed, DataSeed = options.DataSeed,
                ProfileFromStep = options.Profile ? (options.SettleJit ? 1 : options.Warmup + 1) : null, Profile = profile,
                BetweenSteps = step =>
                {
                    resident.Add(ResidentMemory.Current());
                    if (eager is not null)
                    {
                        var (seconds, loss) = EagerStep(eager, corpus, options.DataSeed, step, tokensSpec.Shape[0], tokensSpec.Shape[1]);
                        if (warmupEnd >= 0 && step > warmupEnd) eagerTimes.Add(seconds);
                        eagerLosses.Add(loss);
                    }
                    bool quiet = jit.AfterStep();
                    if (warmupEnd < 0 && step >= options.Warmup && (quiet || warming.Elapsed.TotalSeconds >= options.MaxWarmupSeconds))
                    {
                        warmupEnd = step;
                        settled = quiet;
                        profile?.Reset();   // the profile, like the timings, covers the timed steps only
                    }
                    if (step == warmupEnd) compiledAtWarmupEnd = jit.Compiled;
                },
                // A fixed warm-up's length is known up front (total); only a settling one decides as it goes.
                StopAfter = options.SettleJit ? step => warmupEnd >= 0 && step >= warmupEnd + options.Steps : null,
            }, s => progress?.Invoke(Progress(s)));
            var timed = result.Steps.Where(s => s.Step > warmupEnd).Select(s => s.Seconds).ToList();
            var ratios = eager is null ? null : timed.Zip(eagerTimes, (g, e) => g / e).ToList();
            return new BenchReport
            {
                Graph = compiled.Training.Graph.Name, Mesh = compiled.Spmd.Mesh.ToString(), Devices = (int)compiled.Spmd.Mesh.DeviceCount,
                Remat = compiled.RematName, Fused = compiled.Fusion is not null, DType = peak.DType, Device = PeakFlops.ThisDevice().Model,
                TokensPerStep = flops.TokensPerStep, Flops = flops, Peak = peak, PeakSource = peakResult, ProgramFromCache = programCached, Nominal = PeakFlops.Nominal(PeakFlops.ThisDevice().Kind, peak.DType),
                Compile = phases, Generated = new Timing(timed), Eager = eager is null ? null : new Timing(eagerTimes), Ratios = ratios,
                Losses = result.Steps.Select(s => s.Loss).ToList(), EagerLosses = eager is null ? null : eagerLosses,
                ResidentAfterStep = resident, PeakResidentBytes = Math.Max(ResidentMemory.Peak(), resident.DefaultIfEmpty().Max()), PlannedMemory = memory,
                Profile = result.Profile, WallSeconds = wall.Elapsed.TotalSeconds,
                WarmupSteps = (int)warmupEnd, JitSettled = settled, MethodsCompiledWhileTimed = jit.Compiled - compiledAtWarmupEnd,
            };
        }
        finally
        {
            eager?.Dispose();
        }
    }

    /// <summary>
    /// The eager peer, from the program's own initial weights: on a mesh, the whole tensors its devices' pieces are cut
    /// from. Both sides then compute the same steps, so their losses agree step by step (to float rounding of the mesh's
    /// reductions) and each checks the other.
    /// </summary>
    private static EagerTrainer CreateEager(IGraphProgram program, long seed)
    {
        using var scope = NewDisposeScope();
        return CreateEager(program, Shards.InitWhole(program, seed));
    }

    /// <summary>The eager peer starting from <paramref name="persistent"/>, the program's whole persistent tensors (one device's, or <see cref="Shards.InitWhole"/>'s on a mesh; copied).</summary>
    internal static EagerTrainer CreateEager(IGraphProgram program, Tensor[] persistent)
    {
        var weights = program.Parameters.Select((p, i) => (p, i)).Where(x => x.p.Role == TensorRole.Parameter)
            .ToDictionary(x => x.p.Name, x => persistent[x.i]);
        return new EagerTrainer(EagerConfig(program), weights);
    }

    private static PalmConfig EagerConfig(IGraphProgram program) => ReferenceRunner.ConfigFrom(program)
        ?? throw new InvalidOperationException($"--vs-eager needs PaLM's parameters ({string.Join(", ", PalmModel.WeightNames)}); graph '{program.Name}' has others");

    /// <summary>One eager step on all cores (device threads have a share of them), timed like the generated one: batch in, scalars out.</summary>
    private static (double Seconds, double Loss) EagerStep(EagerTrainer eager, ByteCorpus corpus, long dataSeed, long step, long batch, long seq)
    {
        int threads = torch.get_num_threads();
        torch.set_num_threads(Environment.ProcessorCount);
        try
        {
            var sw = Stopwatch.StartNew();
            using var scope = NewDisposeScope();
            var (tokens, targets) = corpus.Batch(dataSeed, step, batch, seq);
            var r = eager.Step(tokens, targets, step);
            return (sw.Elapsed.TotalSeconds, r.Loss);
        }
        finally
        {
            torch.set_num_threads(threads);
        }
    }
}
