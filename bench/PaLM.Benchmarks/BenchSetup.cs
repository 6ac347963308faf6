using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace PaLM.Benchmarks;

/// <summary>
/// Where the suite runs from and in which mode: the repository root (found by walking up to
/// <c>PaLM.Compiler.sln</c>) and smoke mode (<c>--smoke</c> or <c>PALM_BENCH_SMOKE=1</c>), in which every benchmark
/// runs once (BenchmarkDotNet's Dry job) over the cheap parameter values only.
/// </summary>
public static class BenchSetup
{
    private static readonly Lazy<string> s_repoRoot = new(FindRepoRoot);

    /// <summary>Smoke mode: one Dry run of each benchmark over the small cases, to prove the suite works.</summary>
    public static bool Smoke { get; set; } = Environment.GetEnvironmentVariable("PALM_BENCH_SMOKE") is "1" or "true";

    /// <summary>The repository root: the first folder above the program that holds <c>PaLM.Compiler.sln</c>.</summary>
    public static string RepoRoot => s_repoRoot.Value;

    /// <summary>The path of <c>graphs/NAME.palm</c>.</summary>
    public static string GraphPath(string name) => Path.Combine(RepoRoot, "graphs", name + ".palm");

    /// <summary>
    /// The in-process toolchain: BenchmarkDotNet's default builds a project of its own per job in another folder, which
    /// would get neither the repo's props nor the libLibTorchSharp patch. Generous timeout: a palm-cpu run takes minutes.
    /// </summary>
    public static InProcessEmitToolchain Toolchain { get; } = new(TimeSpan.FromMinutes(60), logOutput: true);

    /// <summary>The smoke job: BenchmarkDotNet's Dry (cold start, one warmup, one iteration, one invocation), in-process.</summary>
    public static Job SmokeJob { get; } = Job.Dry.WithToolchain(Toolchain).WithId("Smoke");

    /// <summary>A measuring job, in-process, one launch, unroll factor 1 (a benchmark call is a whole step or phase).</summary>
    public static Job Measure(string id, int warmups, int iterations, int? invocations = null)
    {
        var job = Job.Default.WithToolchain(Toolchain).WithId(id)
            .WithLaunchCount(1).WithWarmupCount(warmups).WithIterationCount(iterations).WithUnrollFactor(1);
        return invocations is int n ? job.WithInvocationCount(n) : job;
    }

    /// <summary>Set when the command line names jobs (<c>--job</c>): those replace every class's own job.</summary>
    public static bool JobsFromCommandLine { get; set; }

    /// <summary>
    /// A class's own measuring job, unless smoke mode (the program's config supplies the smoke job) or the command line
    /// names jobs: BenchmarkDotNet would otherwise run both, and a palm-cpu run takes minutes a job.
    /// </summary>
    internal static ManualConfig JobConfig(Job job)
    {
        var config = ManualConfig.CreateEmpty();
        if (!Smoke && !JobsFromCommandLine) config.AddJob(job);
        return config;
    }

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "PaLM.Compiler.sln")))
                return dir.FullName;
        throw new DirectoryNotFoundException($"no PaLM.Compiler.sln in any folder above {AppContext.BaseDirectory}");
    }
}
