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
        Assert.Equal(one, four);
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
    }

    [Fact]
    public async Task Ir_Partitioned_ShowsLocalDimsAndCollectives()
    {
        var r = (await Proc.Palmc("ir", "graphs/palm-tiny.palm", "--partitioned", "--mesh", "data=2,model=2")).Expect(0);
        Assert.Contains("reduce_scatter(", r.Stdout);
        Assert.Contains("d_model/2", r.Stdout);
        Assert.Contains("global=", r.Stdout);
    }
}
