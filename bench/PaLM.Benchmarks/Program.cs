using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace PaLM.Benchmarks;

/// <summary>
/// The benchmark program: BenchmarkDotNet's switcher over this assembly, always in-process. <c>--smoke</c> (or
/// <c>PALM_BENCH_SMOKE=1</c>) runs every benchmark once over the cheap cases. Exits 1 when a benchmark failed or none ran.
/// </summary>
public static class Program
{
    /// <summary>Runs the benchmarks that the arguments select (BenchmarkDotNet's command line, plus <c>--smoke</c>).</summary>
    public static int Main(string[] args)
    {
        if (args.Contains("--smoke"))
        {
            BenchSetup.Smoke = true;
            args = [.. args.Where(a => a != "--smoke")];
        }
        BenchSetup.JobsFromCommandLine = args.Any(a => a is "--job" or "-j" || a.StartsWith("--job=", StringComparison.Ordinal));
        IConfig config = DefaultConfig.Instance
            .WithArtifactsPath(Path.Combine(BenchSetup.RepoRoot, "bench", "PaLM.Benchmarks", "BenchmarkDotNet.Artifacts"))
            // Every job in-process, those given with --job included.
            .AddJob(Job.Default.WithToolchain(BenchSetup.Toolchain).AsMutator());
        if (BenchSetup.Smoke)
        {
            // Smoke proves the suite runs, not how fast: it may run a Debug build (CI reuses the test build).
            config = config.AddJob(BenchSetup.SmokeJob).WithOptions(ConfigOptions.DisableOptimizationsValidator);
            if (!args.Any(a => a is "--filter" or "-f" || a.StartsWith("--filter=", StringComparison.Ordinal)))
                args = [.. args, "--filter", "*"];
        }
        var summaries = BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config).ToList();
        return Check(summaries);
    }

    // BenchmarkDotNet reports a failed benchmark in its summary and still exits 0; CI needs the failure.
    private static int Check(IReadOnlyList<Summary> summaries)
    {
        // --list, --help and the like run nothing and are not failures.
        if (summaries.Count == 0) return BenchSetup.Smoke ? Fail("no benchmark ran") : 0;
        var problems = new List<string>();
        foreach (var s in summaries)
        {
            if (s.HasCriticalValidationErrors)
                problems.AddRange(s.ValidationErrors.Where(e => e.IsCritical).Select(e => e.Message));
            if (s.BenchmarksCases.Length == 0) problems.Add($"{s.Title}: no benchmark case");
            foreach (var c in s.BenchmarksCases)
            {
                var report = s[c];
                if (report is null || !report.Success || report.ResultStatistics is null)
                    problems.Add($"{c.DisplayInfo}: failed");
            }
        }
        if (problems.Count > 0) return Fail(string.Join(Environment.NewLine, problems));
        var cases = summaries.Sum(s => s.BenchmarksCases.Length);
        Console.WriteLine($"palm-benchmarks: {cases} benchmark cases ran{(BenchSetup.Smoke ? " (smoke)" : "")}");
        return 0;
    }

    private static int Fail(string message)
    {
        Console.Error.WriteLine($"palm-benchmarks: FAILED: {message}");
        return 1;
    }
}
