using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace PaLM.Cli.Tests;

/// <summary>The MPI tests run one at a time (each starts several processes on a small machine), after the parallel ones.</summary>
[CollectionDefinition("mpi", DisableParallelization = true)]
public sealed class MpiCollection;

/// <summary>
/// A test that needs Open MPI's mpirun. Without it the test is skipped with the reason, except on CI (CI=true), where
/// .ci/run installs Open MPI and a missing mpirun must fail the test rather than hide it.
/// </summary>
public sealed class MpiFactAttribute : FactAttribute
{
    public MpiFactAttribute()
    {
        if (MpiTests.Mpirun is null && !string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase))
            Skip = "mpirun not found on PATH (apt-get install openmpi-bin libopenmpi-dev); on CI (CI=true) this test fails instead";
    }
}

/// <summary>
/// palmc over Open MPI as a user runs it: palmc launch (and raw mpirun) of the training step on several processes,
/// compared with the in-process mesh; the collectives against the in-process backend; a rank killed, a rank that fails
/// to compile, ranks that disagree; a crash and resume from sharded checkpoints; the all-reduce benchmark.
/// </summary>
[Collection("mpi")]
public sealed class MpiTests
{
    public static string? Mpirun { get; } = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
        .Select(d => Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists);

    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(240);

    private static Task<ProcResult> Palmc(string[] args, Dictionary<string, string>? env = null) =>
        Proc.Dotnet(Repo.PalmcDll, args, timeout: s_timeout, env: env);

    private static (int Step, double Loss)[] Curve(string csv) =>
        File.ReadAllLines(csv).Skip(1).Select(l => l.Split(','))
            .Select(f => (int.Parse(f[0], CultureInfo.InvariantCulture), double.Parse(f[1], CultureInfo.InvariantCulture))).ToArray();

    private static void AssertSameLosses((int Step, double Loss)[] expected, (int Step, double Loss)[] got, double relative)
    {
        Assert.Equal(expected.Select(e => e.Step), got.Select(g => g.Step));
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(got[i].Loss - expected[i].Loss) <= relative * Math.Abs(expected[i].Loss),
                $"step {expected[i].Step}: loss {got[i].Loss:R} vs in-process {expected[i].Loss:R}");
    }

    private static void RequireMpirun() => Assert.True(Mpirun is not null, "mpirun is not on PATH: .ci/run installs openmpi-bin and libopenmpi-dev");

    [MpiFact]
    public async Task LaunchedTrainingOnFourRanksMatchesTheInProcessMesh()
    {
        RequireMpirun();
        using var dir = new TempDir();
        string[] train = ["train", "graphs/palm-tiny.palm", "--mesh", "data=2,model=2", "--steps", "5"];
        (await Palmc([.. train, "--curve", dir.File("inprocess")])).Expect(0);
        var launched = (await Palmc(["launch", "-np", "4", "--", .. train, "--curve", dir.File("mpi")])).Expect(0);
        AssertSameLosses(Curve(dir.File("inprocess.csv")), Curve(dir.File("mpi.csv")), 1e-6);
        // Only rank 0 reports: one line per step, not four.
        Assert.Equal(5, launched.Lines.Count(l => l.StartsWith("step ", StringComparison.Ordinal)));
        Assert.Contains("one per MPI rank (4 ranks", launched.Stdout);
    }

    [MpiFact]
    public async Task TrainingOverTcpOnLoopbackMatchesTheInProcessMesh()
    {
        RequireMpirun();
        using var dir = new TempDir();
        string[] train = ["train", "graphs/palm-tiny.palm", "--mesh", "data=2", "--steps", "3"];
        (await Palmc([.. train, "--curve", dir.File("inprocess")])).Expect(0);
        var dry = (await Palmc(["launch", "-np", "2", "--tcp", "--dry-run", "--", .. train])).Expect(0);
        Assert.Contains("--mca btl tcp,self --mca btl_tcp_if_include lo", dry.Stdout);
        (await Palmc(["launch", "-np", "2", "--tcp", "--", .. train, "--curve", dir.File("tcp")])).Expect(0);
        AssertSameLosses(Curve(dir.File("inprocess.csv")), Curve(dir.File("tcp.csv")), 1e-6);
    }

    [MpiFact]
    public async Task CollectivesMatchTheInProcessBackend()
    {
        RequireMpirun();
        using var dir = new TempDir();
        (await Palmc(["launch", "-np", "4", "--", "bench", "--verify-collectives", dir.Path])).Expect(0);
        var rows = Enumerable.Range(0, 4).SelectMany(r => File.ReadAllLines(dir.File($"rank-{r}.jsonl")))
            .Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(4 * 48, rows.Count);
        string S(JsonElement e, string k) => e.GetProperty(k).ValueKind == JsonValueKind.String ? e.GetProperty(k).GetString()! : e.GetProperty(k).GetRawText();
        foreach (var op in new[] { "AllGather", "ReduceScatter", "AllReduce", "AllToAll" })
            Assert.Contains(rows, r => S(r, "op") == op && r.GetProperty("group").GetArrayLength() == 4);   // every op over the 4-member group too
        foreach (var r in rows)
        {
            var what = r.GetRawText();
            Assert.True(S(r, "mpi_shape") == S(r, "inprocess_shape"), what);
            var op = S(r, "op");
            var dtype = S(r, "dtype");
            bool sum = op is "ReduceScatter" or "AllReduce";
            int members = r.GetProperty("group").GetArrayLength();
            // Data movement and integer sums are exact; a float sum of two members is one IEEE addition either way.
            if (!sum || dtype == "Int64" || (members == 2 && dtype is "Float32" or "Float64"))
                Assert.True(S(r, "mpi_sha256") == S(r, "inprocess_sha256"), "not bitwise equal: " + what);
            else
            {
                double tol = dtype switch { "Float32" => 1e-6, "Float64" => 1e-14, _ => 1.6e-2 } * Math.Max(1, r.GetProperty("max_abs").GetDouble()) * members;
                Assert.True(r.GetProperty("max_abs_diff").GetDouble() <= tol, what);
            }
        }
        // Every member of a group gets the same bits from an all-reduce (they hold the same replicated value after it).
        foreach (var c in rows.Where(r => S(r, "op") == "AllReduce").GroupBy(r => (S(r, "case"), S(r, "group"))))
            Assert.Single(c.Select(r => S(r, "mpi_sha256")).Distinct());
    }

    [MpiFact]
    public async Task KillingARankEndsTheJobNamingIt()
    {
        RequireMpirun();
        var tag = Guid.NewGuid().ToString("N");
        var output = new StringBuilder();
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = Repo.Root, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Repo.PalmcDll, "launch", "-np", "2", "--tcp", "--", "train", "graphs/palm-tiny.palm", "--mesh", "data=2", "--steps", "1000000" })
            psi.ArgumentList.Add(a);
        psi.Environment["TERM"] = "dumb";
        psi.Environment["PALMC_TEST_TAG"] = tag;   // exported to the ranks: how this test finds rank 1's process
        using var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        try
        {
            var wait = Stopwatch.StartNew();
            while (!Snapshot().Contains("step    10 "))
            {
                Assert.True(!p.HasExited && wait.Elapsed < s_timeout, "the job never reached step 10:\n" + Snapshot());
                await Task.Delay(100);
            }
            var rank1 = RankPid(tag, 1);
            Assert.True(rank1 is not null, "rank 1's process not found");
            var killed = Stopwatch.StartNew();
            Process.GetProcessById(rank1!.Value).Kill();   // SIGKILL
            var ended = p.WaitForExit(TimeSpan.FromSeconds(30));
            var seconds = killed.Elapsed.TotalSeconds;
            Assert.True(ended, $"the job was still running 30 s after rank 1 was killed:\n{Snapshot()}");
            p.WaitForExit();
            Assert.NotEqual(0, p.ExitCode);
            Assert.Contains("palmc launch: the 2-rank job failed", Snapshot());
            Assert.Contains("rank 1 (", Snapshot());
            Assert.Contains("was killed by SIGKILL", Snapshot());
            Assert.True(seconds < 30, $"{seconds:F1} s");
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
        }

        string Snapshot() { lock (output) return output.ToString(); }
    }

    [MpiFact]
    public async Task ARankThatFailsToCompileStopsEveryRank()
    {
        RequireMpirun();
        var r = await Palmc(["launch", "-np", "2", "--", "train", "graphs/palm-tiny.palm", "--mesh", "data=2", "--steps", "2"],
            new() { ["PALMC_FAILPOINT_COMPILE_RANK"] = "1" });
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("1 of 2 rank(s) failed before training (rank 1); stopping all ranks", r.Stderr);
        Assert.Contains("rank 1: error: failpoint PALMC_FAILPOINT_COMPILE_RANK=1", r.Stderr);
        Assert.DoesNotContain("step ", r.Stdout);
    }

    [MpiFact]
    public async Task RanksThatCompiledDifferentJobsAreNamed()
    {
        RequireMpirun();
        // Raw mpirun, one command per rank (MPMD): rank 1 asks for another seed.
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : "dotnet";
        string[] rank(params string[] extra) => ["-np", "1", dotnet, Repo.PalmcDll, "train", "graphs/palm-tiny.palm", "--mesh", "data=2", "--steps", "2", "--backend", "mpi", .. extra];
        var psi = new ProcessStartInfo(Mpirun!) { WorkingDirectory = Repo.Root, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in (string[])["--allow-run-as-root", "--oversubscribe", "-x", "TERM=dumb", .. rank(), ":", .. rank("--seed", "5")]) psi.ArgumentList.Add(a);
        psi.Environment["TERM"] = "dumb";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(s_timeout), "mpirun did not finish");
        var all = await stdout + await stderr;
        Assert.NotEqual(0, p.ExitCode);
        Assert.Contains("the ranks did not compile the same job: rank 1 differs from rank 0 in options", all);
        Assert.DoesNotContain("step ", await stdout);

        var mismatch = await Palmc(["launch", "-np", "2", "--", "train", "graphs/palm-tiny.palm", "--mesh", "data=2,model=2", "--steps", "1"]);
        Assert.NotEqual(0, mismatch.ExitCode);
        Assert.Contains("has 4 device(s) but this MPI job has 2 rank(s)", mismatch.Stderr);
    }

    [MpiFact]
    public async Task CrashDuringAShardedCheckpointResumesWithTheSameLosses()
    {
        RequireMpirun();
        using var dir = new TempDir();
        string[] Args(string ckpt, string curve) =>
            ["launch", "-np", "2", "--", "train", "graphs/palm-tiny.palm", "--mesh", "data=2", "--steps", "6", "--checkpoint", ckpt, "--checkpoint-every", "2", "--curve", curve];
        (await Palmc(Args(dir.File("reference"), dir.File("reference-curve")))).Expect(0);
        Assert.True(File.Exists(Path.Combine(dir.File("reference"), "step-00000006", "manifest.json")));

        // Rank 0 pauses in step 4's save after both shards are written, before the manifest; then rank 1 is killed.
        var ckpt = dir.File("crashed");
        var tag = Guid.NewGuid().ToString("N");
        var run = Palmc(Args(ckpt, dir.File("crashed-curve")),
            new() { ["PALMC_FAILPOINT_CHECKPOINT_STEP"] = "4", ["PALMC_FAILPOINT_CHECKPOINT_PAUSE_MS"] = "60000", ["PALMC_TEST_TAG"] = tag });
        var staging = Path.Combine(ckpt, ".tmp-step-4-shards");
        var wait = Stopwatch.StartNew();
        while (!(File.Exists(Path.Combine(staging, "device-0.bin")) && File.Exists(Path.Combine(staging, "device-1.bin"))
                 && !Directory.EnumerateFiles(staging, "*.entry.json").Any()))
        {
            Assert.True(!run.IsCompleted && wait.Elapsed < s_timeout, "the run never reached the paused save of step 4");
            await Task.Delay(50);
        }
        Process.GetProcessById(RankPid(tag, 1) ?? throw new InvalidOperationException("rank 1 not found")).Kill();
        var crashed = await run;
        Assert.NotEqual(0, crashed.ExitCode);
        Assert.True(Directory.Exists(Path.Combine(ckpt, "step-00000002")));
        Assert.False(Directory.Exists(Path.Combine(ckpt, "step-00000004")));

        var resumed = (await Palmc(Args(ckpt, dir.File("resumed-curve")))).Expect(0);
        Assert.Contains("resuming from step 2", resumed.Stdout);
        Assert.Equal(Curve(dir.File("reference-curve.csv")).Skip(2), Curve(dir.File("resumed-curve.csv")));
        // The sharded checkpoint is an ordinary one: the in-process mesh resumes from it too.
        var inProcess = (await Palmc(["train", "graphs/palm-tiny.palm", "--mesh", "data=2", "--steps", "6", "--checkpoint", dir.File("reference"), "--checkpoint-every", "2"])).Expect(0);
        Assert.Contains("nothing to do: the checkpoint is already at step 6", inProcess.Stdout);
    }

    [MpiFact]
    public async Task BenchReportsAllReduceBandwidth()
    {
        RequireMpirun();
        var r = (await Palmc(["launch", "-np", "2", "--", "bench", "--json", "--steps", "3", "--warmup", "1", "--sizes", "1MiB,4MiB"])).Expect(0);
        var json = JsonDocument.Parse(r.Stdout).RootElement;
        Assert.Equal("mpi", json.GetProperty("backend").GetString());
        Assert.Equal(2, json.GetProperty("ranks").GetInt32());
        var sizes = json.GetProperty("sizes").EnumerateArray().ToList();
        Assert.Equal([1L << 20, 4L << 20], sizes.Select(s => s.GetProperty("bytes").GetInt64()));
        foreach (var s in sizes)
        {
            Assert.True(s.GetProperty("algbw_gb_per_s").GetDouble() > 0);
            Assert.Equal(s.GetProperty("algbw_gb_per_s").GetDouble(), s.GetProperty("busbw_gb_per_s").GetDouble(), 9);   // 2(n-1)/n = 1 for 2 ranks
            Assert.True(s.GetProperty("min_seconds").GetDouble() <= s.GetProperty("median_seconds").GetDouble());
        }
    }

    [Fact]
    public async Task LaunchRejectsWhatItCannotRun()
    {
        var none = await Palmc(["launch", "-np", "2", "--", "check", "graphs/palm-tiny.palm"]);
        Assert.Equal(1, none.ExitCode);
        Assert.Contains("palmc launch runs one of: train, bench", none.Stderr);
        var backend = await Palmc(["launch", "-np", "2", "--", "train", "graphs/palm-tiny.palm", "--backend", "inprocess"]);
        Assert.Equal(1, backend.ExitCode);
        Assert.Contains("leave --backend out", backend.Stderr);
        var bad = await Palmc(["train", "graphs/palm-tiny.palm", "--backend", "nccl"]);
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("'nccl' is not a backend", bad.Stderr);
    }

    /// <summary>The pid of the process that is rank <paramref name="rank"/> of the job carrying PALMC_TEST_TAG=<paramref name="tag"/>.</summary>
    private static int? RankPid(string tag, int rank)
    {
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out var pid)) continue;
            string env;
            try { env = File.ReadAllText(Path.Combine(d, "environ")); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            var vars = env.Split('\0');
            if (vars.Contains($"PALMC_TEST_TAG={tag}") && vars.Contains($"OMPI_COMM_WORLD_RANK={rank}")) return pid;
        }
        return null;
    }
}
