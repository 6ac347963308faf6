using PaLM.Dsl;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Tests;

namespace PaLM.Sim.Tests;

public sealed class CatalogAndSearchTests
{
    [Fact]
    public void TheBuiltInCatalogHasTheIssuesDevices()
    {
        var c = HardwareCatalog.Load(readEnvironment: false);
        foreach (var name in new[] { "tpu-v4", "a100-80gb", "h100-sxm", "h200" })
        {
            var h = c.Get(name);
            Assert.True(h.Peak("bf16") > 1e14);
            Assert.True(h.MemoryBytes > 30e9 && h.MemoryBandwidth > 1e12);
            Assert.NotEmpty(h.Sources);
        }
        Assert.Equal(275e12, c.Get("tpu-v4").Peak("bf16"));
        var e = Assert.Throws<SimulationException>(() => c.Get("tpu-v4").Peak("f32"));
        Assert.Contains("no peak for dtype 'f32'", e.Message);
        var unknown = Assert.Throws<SimulationException>(() => c.Get("tpu-v9"));
        Assert.Contains("tpu-v4", unknown.Message);
    }

    [Fact]
    public void AUserAddsADeviceInAFile()
    {
        var path = Path.Combine(Path.GetTempPath(), $"palmc-hw-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, """
            { "name": "tpu-v5e", "peak_flops": { "bf16": 197e12 }, "memory_bytes": 17179869184, "memory_bandwidth": 8.19e11,
              "chips_per_host": 4, "chips_per_pod": 256,
              "interconnect": { "topology": "torus", "torus_dims": 2, "max_ring": 16, "links_per_chip": 4, "link_bandwidth": 4.5e10 },
              "network": { "bandwidth_per_host": 2.5e10 } }
            """);
        try
        {
            var c = HardwareCatalog.Load([path], readEnvironment: false);
            var h = c.Get("tpu-v5e");
            Assert.Equal("bf16", h.DefaultDType);
            Assert.Equal(0.8, h.MatmulEfficiency);
            Assert.Equal(256, h.ChipsPerPod);
            File.WriteAllText(path, """{ "name": "broken", "peak_flops": { "bf16": -1 } }""");
            var e = Assert.Throws<SimulationException>(() => HardwareCatalog.Load([path], readEnvironment: false));
            Assert.Contains(path, e.Message);
            Assert.Contains("peak_flops.bf16", e.Message);
            // Wrong kinds and values name their field instead of failing inside the parser.
            const string Good = """
                "peak_flops": { "bf16": 1e12 }, "memory_bytes": 1e9, "memory_bandwidth": 1e11,
                "network": { "bandwidth_per_host": 1e9 }
                """;
            foreach (var (bad, field) in new[]
            {
                (""" "chips_per_host": 0.5, "chips_per_pod": 8, "interconnect": { "topology": "switch", "links_per_chip": 1, "link_bandwidth": 1e10 } """, "chips_per_host"),
                (""" "chips_per_host": 4, "chips_per_pod": 8, "interconnect": { "topology": "torus", "torus_dims": 3, "max_ring": 1, "links_per_chip": 6, "link_bandwidth": 1e10 } """, "interconnect.max_ring"),
                (""" "chips_per_host": 4, "chips_per_pod": 8, "interconnect": "fast" """, "interconnect"),
                (""" "chips_per_host": 4, "chips_per_pod": 8, "default_dtype": 16, "interconnect": { "topology": "switch", "links_per_chip": 1, "link_bandwidth": 1e10 } """, "default_dtype"),
            })
            {
                File.WriteAllText(path, $"{{ \"name\": \"x\", {Good}, {bad} }}");
                var err = Assert.Throws<SimulationException>(() => HardwareCatalog.Load([path], readEnvironment: false));
                Assert.Contains($"'{field}'", err.Message);
            }
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void SearchOnTheFullClusterFindsThePapersLayoutOrAFasterOne()
    {
        var g = Frontend.CompileFile(TestPaths.Graph("palm-540b"));
        var tpu = HardwareCatalog.Load(readEnvironment: false).Get("tpu-v4");
        var r = LayoutSearch.Run(g, tpu, 6144);
        Assert.NotEmpty(r.Ranked);
        var paper = r.Ranked.Single(o => o.Candidate.Mesh.ToString() == "pod=2, data=256, model=12"
            && o.Candidate.Layout == ParameterLayout.AsWritten && o.Candidate.Remat == RematPolicy.Palm);
        Assert.True(r.Ranked[0].Prediction!.StepSeconds <= paper.Prediction!.StepSeconds);
        Assert.All(r.Ranked, o => Assert.True(o.Prediction!.Fits));
        // Without remat the 540B activations at batch 2048 cannot fit anywhere.
        Assert.DoesNotContain(r.Ranked, o => o.Candidate.Remat == RematPolicy.None);
        Assert.Contains(r.Rejected, o => o.Rejected!.StartsWith("does not fit", StringComparison.Ordinal) && o.BytesNeeded > tpu.MemoryBytes);
    }

    [Fact]
    public void SearchOnSixtyFourChipsReportsThatNothingFits()
    {
        var g = Frontend.CompileFile(TestPaths.Graph("palm-540b"));
        var tpu = HardwareCatalog.Load(readEnvironment: false).Get("tpu-v4");
        var r = LayoutSearch.Run(g, tpu, 64);
        Assert.Empty(r.Ranked);
        Assert.All(r.Rejected.Where(o => o.BytesNeeded is not null), o => Assert.True(o.BytesNeeded > tpu.MemoryBytes * 0.9));
    }

    [Fact]
    public void LayoutsRewriteOnlyParameterAnnotations()
    {
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var mesh = Mesh.Parse("pod=2,data=2,model=2");
        var replicated = Simulator.ApplyLayout(g, mesh, ParameterLayout.ReplicatedOverBatch);
        var across = Simulator.ApplyLayout(g, mesh, ParameterLayout.ShardedAcrossPods);
        string S(Graph x, string n) => x.Args.Single(a => a.Value.Name == n).Value.Sharding!.Format(x.Args.Single(a => a.Value.Name == n).Value.Type);
        Assert.Equal("{d_model:data, d_ff:model}", S(g, "w_gate"));
        Assert.Equal("{d_ff:model}", S(replicated, "w_gate"));
        Assert.Equal("{d_model:(pod,data), d_ff:model}", S(across, "w_gate"));
        Assert.Equal(S(g, "tokens"), S(replicated, "tokens"));
        Assert.Equal(S(g, "tokens"), S(across, "tokens"));
    }

    [Fact]
    public void TheSweepFillsAPointPerModelChipsAndBatch()
    {
        var tpu = HardwareCatalog.Load(readEnvironment: false).Get("tpu-v4");
        var points = Sweep.Run([TestPaths.Graph("palm-8b")], (f, b) => Frontend.CompileFile(f, new Dictionary<string, long> { ["batch"] = b }),
            tpu, RematPolicy.Palm, [256, 512], [256, 512]);
        Assert.Equal(4, points.Count);
        Assert.All(points, p => Assert.NotNull(p.Prediction));
        // Weak scaling: twice the chips at twice the batch gives nearly twice the tokens/s.
        var small = points.Single(p => p.Chips == 256 && p.Batch == 256).Prediction!;
        var big = points.Single(p => p.Chips == 512 && p.Batch == 512).Prediction!;
        Assert.InRange(big.TokensPerSecond / small.TokensPerSecond, 1.8, 2.05);
        var table = Sweep.Table(points);
        Assert.Contains("| palm-8b | 256 | pod=1, data=32, model=8 |", table);
        Assert.StartsWith("<svg", Sweep.Svg(points, "t"));
    }
}
