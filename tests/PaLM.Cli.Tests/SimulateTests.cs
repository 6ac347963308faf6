using System.Text.Json;

namespace PaLM.Cli.Tests;

/// <summary><c>palmc simulate</c> as a user runs it: the paper's side by side, verdicts, search, sweep, errors.</summary>
public sealed class SimulateTests
{
    [Fact]
    public async Task ThePapersSettingPrintsBesideThePublishedFigures()
    {
        var r = (await Proc.Palmc("simulate", "graphs/palm-540b.palm", "--hardware", "tpu-v4", "--mesh", "pod=2,data=256,model=12",
            "--batch", "2048", "--remat", "palm")).Expect(0);
        foreach (var s in new[] { "MFU", "HFU", "tokens/s", "cross-pod bytes per host per step", "two pods / one pod throughput", "46.2", "57.8", "238,300", "1.950", "fits:" })
            Assert.Contains(s, r.Stdout);
        // With the data axis spanning the pods instead, there is no pod axis to halve: no side by side.
        var other = (await Proc.Palmc("simulate", "graphs/palm-540b.palm", "--hardware", "tpu-v4", "--mesh", "pod=1,data=512,model=12",
            "--batch", "2048", "--remat", "palm")).Expect(0);
        Assert.DoesNotContain("two pods / one pod", other.Stdout);
    }

    [Fact]
    public async Task JsonHasTheIssuesKeys()
    {
        var r = (await Proc.Palmc("simulate", "graphs/palm-540b.palm", "--hardware", "tpu-v4", "--mesh", "pod=2,data=256,model=12",
            "--batch", "2048", "--remat", "palm", "--json")).Expect(0);
        using var doc = JsonDocument.Parse(r.Stdout);
        var root = doc.RootElement;
        foreach (var key in new[] { "step_seconds", "tokens_per_second", "mfu", "hfu", "fits", "memory_per_device_bytes", "cross_pod_bytes_per_host", "breakdown", "paper" })
            Assert.True(root.TryGetProperty(key, out _), $"missing '{key}'");
        foreach (var cat in new[] { "parameters", "gradients", "optimizer_state", "activations", "total" })
            Assert.True(root.GetProperty("memory_per_device_bytes").TryGetProperty(cat, out _), $"memory lacks '{cat}'");
        Assert.True(root.GetProperty("fits").GetBoolean());
        Assert.Equal(4_194_304, root.GetProperty("tokens_per_step").GetInt64());
        var mfu = root.GetProperty("mfu").GetDouble();
        var tps = root.GetProperty("tokens_per_second").GetDouble();
        // MFU is tokens/s x model FLOPs per token / (chips x peak).
        Assert.Equal(tps * root.GetProperty("model_flops_per_step").GetDouble() / 4_194_304 / (6144 * 275e12), mfu, 9);
    }

    [Fact]
    public async Task SixtyFourChipsDoNotFitAndSaySoWithTheBytes()
    {
        var r = (await Proc.Palmc("simulate", "graphs/palm-540b.palm", "--hardware", "tpu-v4", "--mesh", "pod=1,data=8,model=8", "--batch", "64", "--remat", "palm")).Expect(0);
        Assert.Contains("DOES NOT FIT: needs", r.Stdout);
        Assert.Contains("usable (tpu-v4: 34,359,738,368 B)", r.Stdout);
        var s = (await Proc.Palmc("simulate", "graphs/palm-540b.palm", "--hardware", "tpu-v4", "--mesh", "pod=1,data=8,model=8", "--batch", "64", "--search")).Expect(1);
        Assert.Contains("no plan fits", s.Stdout);
        Assert.Contains("B needed", s.Stdout);
    }

    [Fact]
    public async Task SearchShowsTheGivenPlanBesideTheWinners()
    {
        var r = (await Proc.Palmc("simulate", "graphs/palm-540b.palm", "--hardware", "tpu-v4", "--mesh", "pod=2,data=256,model=12",
            "--batch", "2048", "--remat", "palm", "--search", "--top", "3")).Expect(0);
        Assert.Contains("searched", r.Stdout);
        Assert.Contains("pod=2, data=256, model=12", r.Stdout);
        Assert.Matches(@"\n\S+ \(given\)|\n1 \(given\)", r.Stdout);
    }

    [Fact]
    public async Task SweepWritesATableAndAPlot()
    {
        var dir = Directory.CreateTempSubdirectory("palmc-sweep").FullName;
        try
        {
            var r = (await Proc.Palmc("simulate", "graphs/palm-8b.palm", "--hardware", "tpu-v4", "--remat", "palm", "--sweep",
                "--chips", "256,512", "--batches", "256", "-o", Path.Combine(dir, "s"))).Expect(0);
            Assert.Contains("| palm-8b | 256 |", r.Stdout);
            Assert.StartsWith("<svg", File.ReadAllText(Path.Combine(dir, "s.svg")));
            Assert.Contains("| model | chips |", File.ReadAllText(Path.Combine(dir, "s.md")));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task BadInputIsAClearError()
    {
        var unknown = (await Proc.Palmc("simulate", "graphs/palm-tiny.palm", "--hardware", "tpu-v9")).Expect(1);
        Assert.Contains("unknown hardware 'tpu-v9'", unknown.Stderr);
        Assert.Contains("h100-sxm", unknown.Stderr);
        var missing = (await Proc.Palmc("simulate", "graphs/palm-tiny.palm")).Expect(1);
        Assert.Contains("--hardware is required", missing.Stderr);
        var dtype = (await Proc.Palmc("simulate", "graphs/palm-tiny.palm", "--hardware", "tpu-v4", "--dtype", "f32")).Expect(1);
        Assert.Contains("no peak for dtype 'f32'", dtype.Stderr);
        var batch = (await Proc.Palmc("simulate", "graphs/palm-tiny.palm", "--hardware", "tpu-v4", "--batch", "6", "--mesh", "data=4")).Expect(1);
        Assert.DoesNotContain("   at ", batch.Stderr);
        Assert.Contains("batch", batch.Stderr);
        var measure = (await Proc.Palmc("simulate", "graphs/palm-tiny.palm", "--hardware", "tpu-v4", "--measure")).Expect(1);
        Assert.Contains("needs --hardware cpu", measure.Stderr);
        foreach (var args in new[]
        {
            new[] { "graphs/palm-tiny.palm", "--hardware", "tpu-v4", "--search", "--devices", "0" },
            ["graphs/palm-tiny.palm", "--hardware", "tpu-v4", "--search", "--top", "0"],
            ["nope.palm", "--hardware", "tpu-v4", "--sweep"],
            ["graphs/palm-tiny.palm", "--hardware", "tpu-v4", "--layout", "across-pods"],
        })
        {
            var r = (await Proc.Palmc(["simulate", .. args])).Expect(1);
            Assert.DoesNotContain("internal error", r.Stderr);
            Assert.Contains("error", r.Stderr);
        }
    }
}
