using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PaLM.Passes;
using PaLM.Perf;
using PaLM.Runtime.Training;
using Spectre.Console;

namespace PaLM.Cli.Commands;

/// <summary>
/// <c>palmc bench FILE [--mesh ...] [--remat ...] [--steps N] [--warmup W|auto] [--vs-eager] [--profile] [--json]</c>: compiles
/// the training step, measures the matmul peak in the same process, runs warm-up then timed steps, and reports step
/// time (median and spread), tokens/s, MFU and HFU (PaLM appendix B), the FLOP breakdown, compile time per phase and
/// memory; with --vs-eager the eager TorchSharp step runs alternately in the same process and the ratio is reported.
/// With --backend mpi (under palmc launch) it times MPI all-reduce between the ranks instead (MpiBench).
/// </summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var file = Common.FileArgument();
        file.Arity = ArgumentArity.ZeroOrOne;   // not needed by --backend mpi, which measures collectives
        var backend = MpiSession.Option();
        var verify = new Option<string?>("--verify-collectives") { Description = "with --backend mpi: compare every collective with the in-process backend on random cases, one file per rank in DIR (for the tests)", Hidden = true };
        var mpiSizes = new Option<string>("--sizes") { Description = "with --backend mpi: all-reduce message sizes", DefaultValueFactory = _ => "1MiB,16MiB,64MiB" };
        var mesh = Common.MeshOption();
        var steps = new Option<int>("--steps") { Description = "timed steps", DefaultValueFactory = _ => 10 };
        var warmup = new Option<string>("--warmup")
        {
            Description = "untimed warm-up steps: N, or auto (at least 2, then until .NET stops compiling methods, for at most --max-warmup seconds)",
            DefaultValueFactory = _ => "auto",
        };
        var maxWarmup = new Option<double>("--max-warmup") { Description = "with --warmup auto: the most seconds of warm-up before timing anyway", DefaultValueFactory = _ => 30 };
        var vsEager = new Option<bool>("--vs-eager") { Description = "also run the hand-written eager TorchSharp step, alternating, and report generated/eager" };
        var profile = new Option<bool>("--profile") { Description = "time every op of the generated step and list the costliest" };
        var noDonate = new Option<bool>("--no-donate") { Description = "compile the step without donated parameters and optimizer state (each update allocates new tensors)" };
        var top = new Option<int>("--profile-top") { Description = "ops to list with --profile", DefaultValueFactory = _ => 25 };
        var peakReps = new Option<int>("--peak-reps") { Description = "timed matmuls per peak size (best of them counts)", DefaultValueFactory = _ => PeakFlops.DefaultRepetitions };
        var peakSizes = new Option<string>("--peak-sizes") { Description = "square matmul sizes of the peak measurement", DefaultValueFactory = _ => string.Join(",", PeakFlops.DefaultSizes) };
        var freshPeak = new Option<bool>("--fresh-peak") { Description = "measure the peak in this run by the full protocol, instead of reusing this machine's stored measurement after a short check (see PALMC_CACHE_DIR)" };
        var data = new Option<string?>("--data") { Description = "a text file to cut batches from (default: the licence texts)" };
        var json = new Option<bool>("--json") { Description = "print the report as JSON" };
        var training = new TrainingOptions();
        var cmd = new Command("bench", "Benchmark the compiled training step: step time, tokens/s, MFU and HFU against the measured peak.")
            { file, mesh, steps, warmup, maxWarmup, vsEager, profile, noDonate, top, peakReps, peakSizes, freshPeak, data, json, backend, mpiSizes, verify };
        training.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(() =>
        {
            if (r.GetValue(steps) < 1) throw new UserError("error: --steps must be at least 1");
            var (leastWarmup, settle) = ParseWarmup(r.GetValue(warmup)!);
            if (!(r.GetValue(maxWarmup) >= 0)) throw new UserError("error: --max-warmup cannot be negative");
            using (var mpi = MpiSession.Start(r.GetValue(backend)))
                if (mpi is not null)
                    return r.GetValue(verify) is { } dir ? MpiCollectivesCheck.Run(mpi, dir, cases: 48, seed: 7) : MpiBench.Run(mpi, r.GetValue(file), r.GetValue(mpiSizes)!, r.GetValue(steps), leastWarmup, r.GetValue(json));
            if (r.GetValue(file) is null) throw new UserError("error: palmc bench needs FILE (the graph whose training step to time)");
            if (r.GetValue(peakReps) < 1) throw new UserError("error: --peak-reps must be at least 1");
            var sizes = ParseSizes(r.GetValue(peakSizes)!);
            var corpus = Common.LoadCorpus(r.GetValue(data));
            var sw = Stopwatch.StartNew();
            var g = Common.LoadToCompile(r.GetValue(file)!);
            var parse = sw.Elapsed.TotalSeconds;
            var compiled = training.Compile(r, g, r.GetValue(mesh));
            var options = new BenchOptions
            {
                Steps = r.GetValue(steps), Warmup = leastWarmup, SettleJit = settle, MaxWarmupSeconds = r.GetValue(maxWarmup), VsEager = r.GetValue(vsEager), Profile = r.GetValue(profile), Donate = !r.GetValue(noDonate),
                PeakRepetitions = r.GetValue(peakReps), PeakSizes = sizes, Corpus = corpus,
                PeakCache = r.GetValue(freshPeak) ? null : PeakCache.Default,
            };
            var asJson = r.GetValue(json);
            BenchReport report;
            try { report = RunWithProgress(compiled, parse, options, quiet: asJson); }
            catch (InvalidOperationException e) when (e.Message.Contains("--vs-eager", StringComparison.Ordinal) || e.Message.Contains("corpus", StringComparison.Ordinal))
            {
                throw new UserError($"error: {e.Message}");
            }
            if (asJson) Console.WriteLine(ToJson(report).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            else Print(report, r.GetValue(top));
            return 0;
        }));
        return cmd;
    }

    /// <summary>--warmup: "auto" (at least 2 steps, then until the JIT settles) or a fixed count.</summary>
    private static (int Least, bool Settle) ParseWarmup(string text)
    {
        if (text.Trim().Equals("auto", StringComparison.OrdinalIgnoreCase)) return (2, true);
        if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int n)) return (n, false);
        throw new UserError($"error: --warmup: '{text}' is neither a number of steps (0 or more) nor 'auto'");
    }

    private static long[] ParseSizes(string text)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var sizes = new long[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!long.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out sizes[i]) || sizes[i] < 1 || sizes[i] > 16384)
                throw new UserError($"error: --peak-sizes: '{parts[i]}' is not a size between 1 and 16384");
        return sizes.Length > 0 ? sizes : throw new UserError("error: --peak-sizes names no size");
    }

    private static BenchReport RunWithProgress(CompiledTraining compiled, double parse, BenchOptions options, bool quiet)
    {
        var interactive = !quiet && AnsiConsole.Profile.Capabilities.Interactive && !Console.IsOutputRedirected;
        if (!interactive)
            return StepBench.Run(compiled, parse, options, p => { if (!quiet && p.Line is { } l) Console.Error.WriteLine(l); });
        BenchReport report = null!;
        AnsiConsole.Progress().AutoClear(true).Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("compiling", maxValue: 1);
                report = StepBench.Run(compiled, parse, options, p =>
                {
                    task.Description = p.Phase;
                    task.Value = p.Fraction;
                });
            });
        return report;
    }

    private static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);

    private static string Pct(double? v) => v is { } x ? F($"{x * 100:F1}%") : "n/a";

    private static string Gflops(double f) => F($"{f / 1e9:F1} GFLOP/s");

    private static void Print(BenchReport r, int top)
    {
        var f = r.Flops;
        Console.WriteLine(F($"{r.Graph}: {r.Devices} device(s) [{r.Mesh}], remat {r.Remat}, {(r.Fused ? "fused" : "no fusion")}, {r.DType}, {r.TokensPerStep} tokens/step"));
        Console.WriteLine(F($"device: {r.Device}"));
        var samples = string.Join(", ", r.Peak.Samples.Select(s => F($"{s.Size}²: best {s.BestFlops / 1e9:F1}, median {s.MedianFlops / 1e9:F1} of {s.Repetitions} on {s.Kernel}")));
        if (r.PeakSource is { FromCache: true } ps)
        {
            Console.WriteLine(F($"peak: {Gflops(r.Peak.Flops)} measured on this machine {ps.MeasuredAt:yyyy-MM-dd HH:mm} UTC and stored ({samples}; {r.Peak.Threads} threads)"));
            if (ps.Check is { } check)
                Console.WriteLine(F($"      checked in this run: {check.Samples[0].Size}² best of {check.Samples[0].Repetitions} on {check.Samples[0].Kernel} at {Gflops(check.Flops)} ({check.Seconds:F1} s), not above the stored peak; --fresh-peak measures it again"));
            if (ps.MachineSlowerThanPeak)
                Console.WriteLine(F($"      warning: the check is {ps.CheckRatio:P0} of the stored peak: this machine is slower now than when the peak was measured (shared or throttled), so this run's step times read slow and its MFU low; run again when it is quiet"));
        }
        else
            Console.WriteLine(F($"peak: {Gflops(r.Peak.Flops)} measured in this run ({samples}; {r.Peak.Threads} threads, {r.Peak.Seconds:F1} s)"));
        Console.WriteLine("nominal peak: " + (r.Nominal is { } n ? F($"{n.Flops / 1e12:F1} TFLOP/s per device ({n.Source})") : F($"unknown for {PeakFlops.ThisDevice().Kind} {r.DType} (MFU uses the measured peak)")));
        Console.WriteLine();
        var g = r.Generated;
        Console.WriteLine(F($"generated step: median {g.Median * 1e3:F1} ms (min {g.Min * 1e3:F1}, max {g.Max * 1e3:F1}, IQR {g.RelativeSpread * 100:F1}% of median) over {g.Samples.Count} steps"));
        Console.WriteLine(r.JitSettled switch
        {
            true => F($"warm-up: {r.WarmupSteps} step{(r.WarmupSteps == 1 ? "" : "s")}, until .NET stopped compiling methods (none for 2 steps and 1 s); {r.MethodsCompiledWhileTimed} compiled while timed"),
            false => F($"warm-up: {r.WarmupSteps} step{(r.WarmupSteps == 1 ? "" : "s")}, and .NET was still compiling methods at --max-warmup; {r.MethodsCompiledWhileTimed} compiled while timed"),
            null => F($"warm-up: {r.WarmupSteps} step{(r.WarmupSteps == 1 ? "" : "s")} (fixed); {r.MethodsCompiledWhileTimed} methods compiled while timed{(r.MethodsCompiledWhileTimed > 0 ? " (--warmup auto waits for that to stop)" : "")}"),
        });
        Console.WriteLine(F($"tokens/s: {r.TokensPerSecond:F0}"));
        Console.WriteLine(F($"MFU: {Pct(r.Mfu)} of the measured peak{(r.MfuNominal is { } mn ? F($", {mn * 100:F1}% of nominal") : "")}   HFU: {Pct(r.Hfu)}"));
        if (r.MfuAgainstCheck is { } mc && r.PeakSource?.Check is { } ck)
            Console.WriteLine(mc <= 1
                ? F($"     {mc * 100:F1}% of this run's check ({Gflops(ck.Flops)}; a best of {ck.Samples[0].Repetitions} reads at most what the machine does now, so this figure is at least the MFU now)")
                // The check (under a second, before the steps) caught a slower moment than the steps ran in: no bound.
                : F($"     {mc * 100:F1}% of this run's check ({Gflops(ck.Flops)}): the steps ran faster than the check, which caught a slower moment of the machine; this figure bounds nothing"));
        if (r.Eager is { } e)
        {
            Console.WriteLine(F($"eager step:     median {e.Median * 1e3:F1} ms (min {e.Min * 1e3:F1}, max {e.Max * 1e3:F1}, IQR {e.RelativeSpread * 100:F1}%); eager MFU {Pct(r.EagerMfu)}"));
            var ratios = new Timing(r.Ratios!);
            Console.WriteLine(F($"generated / eager: {r.Ratio:F3} (medians); per step: median {ratios.Median:F3}, min {ratios.Min:F3}, max {ratios.Max:F3}; at the measured peak it would be {r.RatioAtPeak:F3}"));
            if (r.Devices > 1)
                Console.WriteLine(F($"      the eager step runs as one device on all {Environment.ProcessorCount} cores, where the mesh's {r.Devices} virtual devices share them: the ratio includes the mesh's collectives and its split of the cores"));
            if (r.EagerLosses is { Count: > 0 } el)
                Console.WriteLine(F($"losses: step 1 generated {r.Losses[0]:F5}, eager {el[0]:F5}; over {el.Count} steps they differ by at most {r.LossDifference:E1} relative"));
        }
        Console.WriteLine();
        Console.WriteLine(F($"FLOPs per step: model {f.ModelFlopsPerStep:N0} (6N + 12·L·H·Q·T = {f.ModelFlopsPerToken:N0}/token, N = {f.Parameters:N0}, L = {f.Layers})"));
        Console.WriteLine(F($"  executed {f.Executed:N0}: forward {f.Forward:N0}, backward {f.Backward:N0}, recomputed {f.Recomputed:N0}, optimizer {f.Optimizer:N0}; matmul {(double)f.Matmul / f.Executed * 100:F1}%"));
        Console.WriteLine("  per layer: " + string.Join(", ", f.PerLayer.Select(kv => F($"{kv.Key} {kv.Value:N0}"))));
        Console.WriteLine("  by op: " + string.Join(", ", f.ByOp.OrderByDescending(kv => kv.Value).Select(kv => F($"{kv.Key} {(double)kv.Value / f.Executed * 100:F1}%"))));
        var c = r.Compile;
        Console.WriteLine(F($"compile: {c.Total:F2} s (parse {c.Parse:F3}, autodiff {c.Autodiff:F3}, propagate {c.Propagate:F3}, partition {c.Partition:F3}, passes {c.Passes:F3}, Roslyn emit {c.Emit:F3}{(r.ProgramFromCache ? ", from the compilation cache" : "")}); overhead with peak {r.OverheadSeconds:F1} s"));
        var m = r.PlannedMemory;
        Console.WriteLine(F($"memory: peak resident {PlanCommand.Bytes(r.PeakResidentBytes)} (process); planned per device {PlanCommand.Bytes(m.Total)} (parameters {PlanCommand.Bytes(m.Parameters)}, optimizer {PlanCommand.Bytes(m.OptimizerState)}, gradients {PlanCommand.Bytes(m.Gradients)}, activations {PlanCommand.Bytes(m.Activations)})"));
        PrintGemmChoices();
        if (r.Profile is { } p) PrintProfile(p, r.Generated.Samples.Count, top);
    }

    /// <summary>An operand's layout: row- or column-major, "strided" when it is not contiguous (a view that oneDNN copies first).</summary>
    /// <summary>A kernel's name as a JSON key: "blas", "onednn", "blas_dealt", "blas_packed".</summary>
    private static string JsonName(Runtime.GemmKernel k) => Runtime.Gemm.Name(k).Replace('-', '_');

    private static string Ms(double? s) => s is { } x ? F($"{x * 1e3:F1} ms") : "-";

    /// <summary>The matmul kernel tuned for each large product (<see cref="Runtime.Gemm"/>), with the times it chose by.</summary>
    private static void PrintGemmChoices()
    {
        Console.WriteLine($"BLAS: {Runtime.Native.MklDispatch.Describe()}");
        var choices = Runtime.Gemm.Choices;
        if (choices.Count == 0) return;
        var counts = string.Join(", ", Enum.GetValues<Runtime.GemmKernel>().Select(k => F($"{choices.Count(c => c.Kernel == k)} on {Runtime.Gemm.Name(k)}")));
        int stored = choices.Count(c => c.StoredAt is not null);
        var origin = stored == 0 ? "" : F($"; {stored} as stored on this machine, PALMC_GEMM=retune measures them again");
        Console.WriteLine(F($"matmul kernels: {choices.Count} tuned products, {counts} (PALMC_GEMM=blas turns tuning off{origin})"));
        foreach (var c in choices)
        {
            var times = string.Join(", ", c.BestSeconds.OrderBy(p => p.Key).Select(p => F($"{Runtime.Gemm.Name(p.Key)} {Ms(p.Value)}")));
            var when = c.StoredAt is { } at ? F($", stored {at.UtcDateTime:yyyy-MM-dd HH:mm} UTC") : "";
            Console.WriteLine(F($"  {(c.Batch > 1 ? F($"{c.Batch} × ") : "")}{c.M}x{c.K} · {c.K}x{c.N} ({Runtime.Gemm.LayoutName(c.ARowMajor, c.AContiguous)}, {Runtime.Gemm.LayoutName(c.BRowMajor, c.BContiguous)}{(c.Into ? ", into a slice" : "")}): {(c.Kernel is { } k ? Runtime.Gemm.Name(k) : "still measuring")}   {times} (fastest of {Runtime.Gemm.TrialsPerKernel} timed calls each{when}); {c.TotalCalls} calls since"));
        }
    }

    private static void PrintProfile(Runtime.OpProfile p, int steps, int top)
    {
        var total = p.TotalSeconds;
        Console.WriteLine();
        Console.WriteLine(F($"profile (device 0, {steps} steps): {total / steps * 1e3:F1} ms/step inside ops, {p.TotalManagedBytes / 1024.0 / steps:F0} KB of managed objects allocated in them a step"));
        Console.WriteLine("  ms/step   share  calls   GFLOP/s  page faults  KB managed  op                   value                          source");
        foreach (var s in p.Sites.OrderByDescending(s => p.Seconds(s.Id)).Take(top))
        {
            var sec = p.Seconds(s.Id);
            var rate = s.Flops == 0 ? "-" : F($"{s.Flops * p.Calls(s.Id) / sec / 1e9:F1}");
            Console.WriteLine(F($"{sec / steps * 1e3,9:F2} {sec / total * 100,6:F1}% {p.Calls(s.Id) / steps,6} {rate,9} {p.PageFaults(s.Id) / steps,12} {p.ManagedBytes(s.Id) / 1024.0 / steps,11:F1}  {s.Op,-20} {s.Name,-30} {s.Location}"));
        }
    }

    /// <summary>The report as JSON (snake_case keys; times in seconds, rates per second).</summary>
    public static JsonObject ToJson(BenchReport r)
    {
        var f = r.Flops;
        var o = new JsonObject
        {
            ["graph"] = r.Graph, ["mesh"] = r.Mesh, ["devices"] = r.Devices, ["remat"] = r.Remat, ["fused"] = r.Fused, ["dtype"] = r.DType,
            ["device"] = r.Device, ["tokens_per_step"] = r.TokensPerStep,
            ["step_seconds_median"] = r.Generated.Median, ["step_seconds_min"] = r.Generated.Min, ["step_seconds_max"] = r.Generated.Max,
            ["step_seconds_iqr_relative"] = r.Generated.RelativeSpread, ["step_seconds"] = new JsonArray([.. r.Generated.Samples.Select(s => (JsonNode)s)]),
            ["warmup_steps"] = r.WarmupSteps, ["jit_settled"] = r.JitSettled, ["methods_compiled_while_timed"] = r.MethodsCompiledWhileTimed,
            ["tokens_per_second"] = r.TokensPerSecond, ["mfu"] = r.Mfu, ["hfu"] = r.Hfu, ["mfu_nominal"] = r.MfuNominal,
            ["peak_flops"] = r.Peak.Flops, ["peak_source"] = r.PeakSource is { FromCache: true } ? "stored" : "measured",
            ["peak_measured_at"] = (r.PeakSource?.MeasuredAt)?.ToString("o", CultureInfo.InvariantCulture),
            ["peak_check_flops"] = r.PeakSource?.Check?.Flops, ["mfu_against_check"] = r.MfuAgainstCheck,
            ["machine_slower_than_peak"] = r.PeakSource?.MachineSlowerThanPeak ?? false,
            ["program_from_cache"] = r.ProgramFromCache,
            ["mkl_path"] = Runtime.Native.MklDispatch.Path.ToString().ToLowerInvariant(),
            ["gemm_kernels"] = new JsonArray([.. Runtime.Gemm.Choices.Select(c => (JsonNode)new JsonObject
            {
                ["batch"] = c.Batch, ["m"] = c.M, ["k"] = c.K, ["n"] = c.N, ["a_row_major"] = c.ARowMajor, ["b_row_major"] = c.BRowMajor, ["a_contiguous"] = c.AContiguous, ["b_contiguous"] = c.BContiguous,
                ["into"] = c.Into, ["kernel"] = (c.Kernel is { } k ? Runtime.Gemm.Name(k) : null),
                // When the choice was measured, if it was read from this machine's stored choices (null: measured in this run).
                ["stored_at"] = c.StoredAt?.ToString("o", CultureInfo.InvariantCulture),
                // Keyed by kernel ("blas", "onednn", "blas_dealt", "blas_packed"): its fastest timed call (null: not a candidate), its calls since.
                ["seconds_best"] = new JsonObject([.. Enum.GetValues<Runtime.GemmKernel>().Select(k =>
                    KeyValuePair.Create(JsonName(k), (JsonNode?)(c.BestSeconds.TryGetValue(k, out var s) ? s : null)))]),
                ["calls"] = new JsonObject([.. Enum.GetValues<Runtime.GemmKernel>().Select(k => KeyValuePair.Create(JsonName(k), (JsonNode?)c.Calls[k]))]),
            })]),
            ["peak"] = new JsonObject
            {
                ["dtype"] = r.Peak.DType, ["threads"] = r.Peak.Threads, ["seconds"] = r.Peak.Seconds,
                ["samples"] = new JsonArray([.. r.Peak.Samples.Select(s => (JsonNode)new JsonObject { ["size"] = s.Size, ["best_flops"] = s.BestFlops, ["median_flops"] = s.MedianFlops, ["repetitions"] = s.Repetitions, ["kernel"] = s.Kernel })]),
            },
            ["nominal_peak_flops"] = r.Nominal?.Flops, ["nominal_peak_source"] = r.Nominal?.Source,
            ["model_flops_per_token"] = f.ModelFlopsPerToken, ["model_flops_per_step"] = f.ModelFlopsPerStep, ["hardware_flops_per_step"] = f.HardwareFlopsPerStep,
            ["flops"] = new JsonObject
            {
                ["executed"] = f.Executed, ["forward"] = f.Forward, ["backward"] = f.Backward, ["recomputed"] = f.Recomputed, ["optimizer"] = f.Optimizer,
                ["matmul"] = f.Matmul, ["parameters"] = f.Parameters, ["layers"] = f.Layers,
                ["per_layer"] = new JsonObject([.. f.PerLayer.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))]),
                ["by_op"] = new JsonObject([.. f.ByOp.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))]),
            },
            ["compile_seconds"] = new JsonObject
            {
                ["parse"] = r.Compile.Parse, ["autodiff"] = r.Compile.Autodiff, ["propagate"] = r.Compile.Propagate, ["partition"] = r.Compile.Partition,
                ["passes"] = r.Compile.Passes, ["emit"] = r.Compile.Emit, ["total"] = r.Compile.Total,
            },
            ["overhead_seconds"] = r.OverheadSeconds, ["wall_seconds"] = r.WallSeconds,
            ["peak_resident_bytes"] = r.PeakResidentBytes,
            ["resident_bytes_after_step"] = new JsonArray([.. r.ResidentAfterStep.Select(b => (JsonNode)b)]),
            ["memory_per_device_bytes"] = new JsonObject([.. r.PlannedMemory.ByCategory.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))]),
            ["losses"] = new JsonArray([.. r.Losses.Select(l => (JsonNode)l)]),
        };
        if (r.Eager is { } e)
        {
            o["eager_step_seconds_median"] = e.Median;
            o["eager_step_seconds"] = new JsonArray([.. e.Samples.Select(s => (JsonNode)s)]);
            o["eager_mfu"] = r.EagerMfu;
            o["ratio_generated_over_eager"] = r.Ratio;
            o["ratio_at_peak"] = r.RatioAtPeak;
            o["ratio_per_step"] = new JsonArray([.. r.Ratios!.Select(x => (JsonNode)x)]);
            o["eager_losses"] = new JsonArray([.. r.EagerLosses!.Select(l => (JsonNode)l)]);
            o["loss_max_relative_difference"] = r.LossDifference;
        }
        if (r.Profile is { } p)
        {
            var steps = Math.Max(1, r.Generated.Samples.Count);
            o["profile"] = new JsonArray([.. p.Sites.OrderByDescending(s => p.Seconds(s.Id)).Select(s => (JsonNode)new JsonObject
            {
                ["op"] = s.Op, ["value"] = s.Name, ["source"] = s.Location, ["seconds_per_step"] = p.Seconds(s.Id) / steps,
                ["calls_per_step"] = p.Calls(s.Id) / steps, ["flops_per_call"] = s.Flops, ["page_faults_per_step"] = p.PageFaults(s.Id) / steps,
                ["managed_bytes_per_step"] = p.ManagedBytes(s.Id) / steps,
            })]);
        }
        return o;
    }
}
