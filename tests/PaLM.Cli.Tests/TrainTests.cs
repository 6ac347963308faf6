using System.Diagnostics;
using System.Text.Json;

namespace PaLM.Cli.Tests;

/// <summary>
/// palmc train, compile --train and plan --train as a user runs them: the loss falls on the default corpus, a compiled
/// training program trains, plans report training memory per remat policy, and a run killed (SIGKILL) in the middle of
/// a checkpoint save resumes from the last complete checkpoint with bit-identical losses afterwards.
/// </summary>
public sealed class TrainTests
{
    private static string[] CsvLosses(string path) =>
        File.ReadAllLines(path).Skip(1).Select(l => l.Split(',')).Select(f => $"{f[0]}:{f[1]}").ToArray();

    [Fact]
    public async Task TrainLowersTheLossAndWritesTheCurve()
    {
        var dir = Directory.CreateTempSubdirectory("palmc-train-");
        try
        {
            var curve = Path.Combine(dir.FullName, "curve");
            var r = (await Proc.Palmc("train", "graphs/palm-tiny.palm", "--steps", "60", "--mesh", "data=2,model=2", "--remat", "full", "--curve", curve)).Expect(0);
            Assert.Contains(r.Lines, l => l.StartsWith("step    60", StringComparison.Ordinal));
            Assert.Contains("remat full", r.Stdout);
            var losses = File.ReadAllLines(curve + ".csv").Skip(1).Select(l => double.Parse(l.Split(',')[1], System.Globalization.CultureInfo.InvariantCulture)).ToArray();
            Assert.Equal(60, losses.Length);
            Assert.True(losses.TakeLast(10).Average() < 0.75 * Math.Log(256), $"loss did not fall: {string.Join(", ", losses)}");
            Assert.StartsWith("<svg", File.ReadAllText(curve + ".svg"));
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public async Task KilledDuringACheckpointSaveResumesWithIdenticalLosses()
    {
        var dir = Directory.CreateTempSubdirectory("palmc-kill-");
        try
        {
            string[] Args(string ckpt, string curve) =>
                ["train", "graphs/palm-tiny.palm", "--steps", "8", "--mesh", "data=2", "--checkpoint", ckpt, "--checkpoint-every", "2", "--curve", curve];
            var reference = Path.Combine(dir.FullName, "reference");
            (await Proc.Palmc(Args(reference, Path.Combine(dir.FullName, "reference-curve")))).Expect(0);

            // Kill the run while it saves step 4: step 2's checkpoint is complete, step 4's data files are written.
            var ckpt = Path.Combine(dir.FullName, "crashed");
            using (var p = Start(Args(ckpt, Path.Combine(dir.FullName, "crashed-curve")), new() { ["PALMC_FAILPOINT_CHECKPOINT_STEP"] = "4", ["PALMC_FAILPOINT_CHECKPOINT_PAUSE_MS"] = "60000" }))
            {
                var sw = Stopwatch.StartNew();
                while (!Directory.Exists(ckpt) || !Directory.EnumerateDirectories(ckpt, ".tmp-step-4-*").Any(d => File.Exists(Path.Combine(d, "device-1.bin"))))
                {
                    Assert.True(sw.Elapsed < TimeSpan.FromSeconds(90) && !p.HasExited, "the run never reached the paused save of step 4");
                    await Task.Delay(50);
                }
                p.Kill(entireProcessTree: true);    // SIGKILL on Linux
                await p.WaitForExitAsync();
            }
            Assert.True(Directory.Exists(Path.Combine(ckpt, "step-00000002")));
            Assert.False(Directory.Exists(Path.Combine(ckpt, "step-00000004")));

            var resumed = (await Proc.Palmc(Args(ckpt, Path.Combine(dir.FullName, "resumed-curve")))).Expect(0);
            Assert.Contains("resuming from step 2", resumed.Stdout);
            var expected = CsvLosses(Path.Combine(dir.FullName, "reference-curve.csv")).Skip(2).ToArray();
            var got = CsvLosses(Path.Combine(dir.FullName, "resumed-curve.csv"));
            Assert.Equal(expected, got);
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public async Task CompiledTrainingProgramTrains()
    {
        var dir = Directory.CreateTempSubdirectory("palmc-compile-train-");
        try
        {
            (await Proc.Palmc("compile", "graphs/palm-tiny.palm", "--train", "--remat", "dots", "-o", dir.FullName)).Expect(0);
            var run = (await Proc.Dotnet(Path.Combine(dir.FullName, "palm-tiny.dll"), ["--steps", "3"])).Expect(0);
            Assert.Equal(3, run.Lines.Count(l => l.StartsWith("step ", StringComparison.Ordinal)));
            var bad = await Proc.Palmc("compile", "graphs/palm-tiny.palm", "--remat", "dots", "-o", dir.FullName);
            Assert.Equal(1, bad.ExitCode);
            Assert.Contains("add --train", bad.Stderr);
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public async Task PlanReportsTrainingMemoryPerRematPolicy()
    {
        var memory = new Dictionary<string, JsonElement>();
        foreach (var policy in new[] { "none", "dots", "full" })
        {
            var r = (await Proc.Palmc("plan", "graphs/palm-tiny.palm", "--mesh", "data=2,model=2", "--remat", policy, "--json")).Expect(0);
            var json = JsonDocument.Parse(r.Stdout).RootElement;
            var m = json.GetProperty("memory_per_device_bytes");
            foreach (var key in new[] { "parameters", "gradients", "optimizer_state", "activations", "inputs" })
                Assert.True(m.GetProperty(key).GetInt64() > 0, $"{policy}: {key}");
            Assert.Equal(2 * m.GetProperty("parameters").GetInt64(), m.GetProperty("optimizer_state").GetInt64());
            memory[policy] = json;
        }
        long Act(string p) => memory[p].GetProperty("memory_per_device_bytes").GetProperty("activations").GetInt64();
        long Rec(string p) => memory[p].GetProperty("training").GetProperty("recomputed_flops_per_step").GetInt64();
        Assert.True(Act("none") > Act("dots") && Act("dots") > Act("full"));
        Assert.True(Rec("none") == 0 && Rec("dots") > 0 && Rec("full") > Rec("dots"));

        var tooSmall = await Proc.Palmc("plan", "graphs/palm-tiny.palm", "--remat", "auto", "--memory-budget", "1000");
        Assert.Equal(1, tooSmall.ExitCode);
        Assert.Contains("does not fit", tooSmall.Stderr);
    }

    private static Process Start(string[] args, Dictionary<string, string> env)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = Repo.Root, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Repo.PalmcDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["TERM"] = "dumb";
        foreach (var (k, v) in env) psi.Environment[k] = v;
        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }
}
