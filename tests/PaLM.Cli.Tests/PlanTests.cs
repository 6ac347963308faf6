using System.Text.Json;

namespace PaLM.Cli.Tests;

/// <summary><c>palmc plan</c>, <c>run --mesh</c> and <c>ir --partitioned</c> as a user runs them.</summary>
public sealed class PlanTests
{
    [Fact]
    public async Task Plan_Palm540b_OnThePapersMesh_Json()
    {
        var r = (await Proc.Palmc("plan", "graphs/palm-540b.palm", "--mesh", "pod=2,data=256,model=12", "--json")).Expect(0);
        using var doc = JsonDocument.Parse(r.Stdout);
        var root = doc.RootElement;
        foreach (var key in new[] { "mesh", "tensors", "collectives", "memory_per_device_bytes" })
            Assert.True(root.TryGetProperty(key, out _), $"missing '{key}'");
        Assert.Equal(6144, root.GetProperty("mesh").GetProperty("devices").GetInt64());
        var perDevice = root.GetProperty("memory_per_device_bytes").GetProperty("parameters").GetDouble();
        var total = root.GetProperty("parameter_bytes_total").GetDouble();
        Assert.Equal(total / 3072, perDevice, 0);
        var tensors = root.GetProperty("tensors").EnumerateArray().ToList();
        string Sharding(string name) => tensors.Single(t => t.GetProperty("name").GetString() == name).GetProperty("sharding_text").GetString()!;
        Assert.Equal("{d_model:data, d_ff:model}", Sharding("w_gate"));
        Assert.Equal("{batch:(pod,data), heads:model}", Sharding("q"));
        Assert.Equal("{batch:(pod,data), d_ff:model}", Sharding("up"));
        var collective = root.GetProperty("collectives").EnumerateArray().First();
        foreach (var key in new[] { "kind", "axes", "bytes_per_device", "count_per_step", "needed_by", "line", "reason" })
            Assert.True(collective.TryGetProperty(key, out _), $"collective lacks '{key}'");
    }

    [Fact]
    public async Task Plan_Tables_And_Explain()
    {
        var r = (await Proc.Palmc("plan", "graphs/palm-tiny.palm", "--mesh", "data=2,model=2")).Expect(0);
        Assert.Contains("reduce-scatter", r.Stdout);
        Assert.Contains("memory per device", r.Stdout);
        var e = (await Proc.Palmc("plan", "graphs/palm-tiny.palm", "--mesh", "data=2,model=2", "--explain", "q")).Expect(0);
        Assert.Contains("annotated @shard", e.Stdout); // the chain ends at w_q's or the tokens' annotation
        Assert.Contains("%w_q", e.Stdout);
        var missing = (await Proc.Palmc("plan", "graphs/palm-tiny.palm", "--explain", "nope")).Expect(1);
        Assert.Contains("no tensor named 'nope'", missing.Stderr);
    }

    [Fact]
    public async Task Run_OnTwoByTwo_PrintsTheSingleDeviceLoss()
    {
        var one = (await Proc.Palmc("run", "graphs/palm-tiny.palm", "--mesh", "data=1,model=1")).Expect(0).Stdout;
        var four = (await Proc.Palmc("run", "graphs/palm-tiny.palm", "--mesh", "data=2,model=2")).Expect(0).Stdout;
        Assert.StartsWith("loss = ", one);
        Assert.StartsWith("loss = ", four);
        // The same loss to float rounding, not bit for bit: with data=2 each device averages its half of the batch and
        // the halves are averaged after, a different order of sums than one device's mean (a few ulps apart).
        double Loss(string s) => double.Parse(s["loss = ".Length..].Trim(), System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(Math.Abs(Loss(one) - Loss(four)) <= 4e-6 * Math.Abs(Loss(one)), $"one device: {one.Trim()}, 2×2 mesh: {four.Trim()}");
    }

    [Fact]
    public async Task UnevenMesh_IsAClearError()
    {
        // palm-tiny's batch is 8: three-way data parallelism does not divide it.
        var r = (await Proc.Palmc("plan", "graphs/palm-tiny.palm", "--mesh", "data=3")).Expect(1);
        Assert.Contains("palm.palm:", r.Stderr);
        Assert.Contains("tensor 'tokens': dim 'batch' (size 8) does not divide evenly over mesh axis 'data'", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
        var bad = (await Proc.Palmc("plan", "graphs/palm-tiny.palm", "--mesh", "data=two")).Expect(1);
        Assert.Contains("--mesh", bad.Stderr);
        var typo = (await Proc.Palmc("plan", "graphs/palm-tiny.palm", "--mesh", "data=2,modle=2")).Expect(1);
        Assert.Contains("mesh axis 'modle' is not declared in palm-tiny's mesh (pod, data, model)", typo.Stderr);
    }

    [Fact]
    public async Task Ir_Partitioned_ShowsLocalDimsAndCollectives()
    {
        var r = (await Proc.Palmc("ir", "graphs/palm-tiny.palm", "--partitioned", "--mesh", "data=2,model=2")).Expect(0);
        Assert.Contains("reduce_scatter(", r.Stdout);
        Assert.Contains("d_model/2", r.Stdout);
        Assert.Contains("global=", r.Stdout);
    }

    [Fact]
    public async Task Example_PlanExplain_PrintsThePlansCollectivesAndExplain()
    {
        var dll = Repo.ExampleDllOf("PlanExplain");
        Assert.True(File.Exists(dll), $"{dll} not built (tests/PaLM.Cli.Tests references examples/PlanExplain to build it)");
        using var elsewhere = new TempDir();   // it must find graphs/palm-tiny.palm from its own folder
        var r = (await Proc.Dotnet(dll, [], cwd: elsewhere.Path)).Expect(0);

        var json = (await Proc.Palmc("plan", "graphs/palm-tiny.palm", "--mesh", "data=2,model=2", "--json")).Expect(0);
        using var doc = JsonDocument.Parse(json.Stdout);
        var cs = doc.RootElement.GetProperty("collectives").EnumerateArray().ToList();
        Assert.Equal($"palm-tiny on mesh data=2, model=2, pod=1 (4 devices): {cs.Count} collectives", r.Lines[0]);
        for (int i = 0; i < cs.Count; i++)
        {
            var axes = string.Join(",", cs[i].GetProperty("axes").EnumerateArray().Select(a => a.GetString()));
            Assert.StartsWith($"{cs[i].GetProperty("kind").GetString()} over {axes} of %{cs[i].GetProperty("tensor").GetString()} " +
                $"{cs[i].GetProperty("from").GetString()} -> {cs[i].GetProperty("to").GetString()}:", r.Lines[1 + i]);
        }
        var explain = (await Proc.Palmc("plan", "graphs/palm-tiny.palm", "--mesh", "data=2,model=2", "--explain", "mlp")).Expect(0);
        Assert.EndsWith(explain.Stdout, r.Stdout);
        var uneven = (await Proc.Dotnet(dll, ["graphs/palm-tiny.palm", "data=3"])).Expect(1);
        Assert.Contains("does not divide evenly", uneven.Stderr);
    }
}
