// palmc as a library: how efficiently the generated training step uses this machine, as PaLM's appendix B measures it.
//
//   dotnet run -c Release --project examples/MeasureMfu [-- path/to/graph.palm [steps]]
//
// Compiles the graph's training step (autodiff, Adafactor, fusion), measures the matmul peak in this process, runs
// warm-up steps until the JIT settles, then timed steps, and prints MFU = model FLOPs per token × tokens/s ÷ peak.
// Without an argument it uses graphs/palm-tiny.palm from the repository (the folder holding PaLM.Compiler.sln, found
// upward from the current directory, then from the program's own folder).

using System.Globalization;
using PaLM.Dsl;
using PaLM.Passes;
using PaLM.Perf;

var repo = FindRepoRoot(Environment.CurrentDirectory) ?? FindRepoRoot(AppContext.BaseDirectory);
var path = args.Length > 0 ? args[0] : repo is null ? null : Path.Combine(repo, "graphs", "palm-tiny.palm");
if (path is null)
{
    Console.Error.WriteLine("error: PaLM.Compiler.sln not found above the current directory or this program; pass a .palm file");
    return 1;
}
var steps = args.Length > 1 && int.TryParse(args[1], CultureInfo.InvariantCulture, out var n) && n > 0 ? n : 10;

// Keep the matmul autotuner's choices under palmc's cache folder, as the CLI does: later runs skip its trial calls.
PaLM.Runtime.Gemm.Store = GemmTuningCache.Default;

BenchReport report;
try
{
    // Parse, compile the training step for the graph's own mesh, measure the peak, then time the steps.
    report = StepBench.Run(path, mesh: null, new TrainingConfig { Remat = RematPolicy.None },
        // Warm up until .NET stops re-compiling the step's methods (as `palmc bench` does by default), 10 s at most.
        new BenchOptions { Steps = steps, Warmup = 2, SettleJit = true, MaxWarmupSeconds = 10, PeakSizes = [1024, 2048], PeakRepetitions = 20 });
}
catch (DslException e)
{
    Console.Error.WriteLine(e.FormatAll());
    return 1;
}

var f = report.Flops;
Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
    $"{report.Graph}: {f.ModelFlopsPerToken:N0} model FLOPs/token (6N + 12·L·H·Q·T), {report.TokensPerStep} tokens/step"));
Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
    $"step {report.Generated.Median * 1e3:F1} ms (median of {report.Generated.Samples.Count} after {report.WarmupSteps} warm-up steps{(report.JitSettled == true ? ", the JIT settled" : "")}), {report.TokensPerSecond:F0} tokens/s"));
Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
    $"peak {report.Peak.Flops / 1e9:F1} GFLOP/s (measured, best of {report.Peak.Samples[0].Repetitions} per size)"));
Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"MFU = {report.Mfu * 100:F1}%"));
return 0;

static string? FindRepoRoot(string start)
{
    for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
        if (File.Exists(Path.Combine(dir.FullName, "PaLM.Compiler.sln"))) return dir.FullName;
    return null;
}
