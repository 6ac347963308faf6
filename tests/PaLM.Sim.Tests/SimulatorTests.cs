using PaLM.Dsl;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Spmd;
using PaLM.Tests;

namespace PaLM.Sim.Tests;

/// <summary>The cost model's roofline and overlap rules, memory against hand-computed palm-tiny figures, and the verdicts.</summary>
public sealed class SimulatorTests
{
    private static readonly HardwareCatalog Catalog = HardwareCatalog.Load(readEnvironment: false);

    // A made-up chip with round figures, so expected times are easy to write down.
    private const string RoundChip = """
        { "name": "round", "peak_flops": { "f32": 1e12, "bf16": 2e12 }, "default_dtype": "f32", "matmul_efficiency": 0.5,
          "memory_bytes": 1000000000, "memory_bandwidth": 1e11, "chips_per_host": 4, "chips_per_pod": 16,
          "interconnect": { "topology": "switch", "links_per_chip": 2, "link_bandwidth": 1e10, "latency_seconds": 1e-6 },
          "network": { "bandwidth_per_host": 4e9 } }
        """;

    private static Hardware Round()
    {
        var c = HardwareCatalog.Load(readEnvironment: false);
        c.AddText(RoundChip, "test");
        return c.Get("round");
    }

    [Fact]
    public void AMatmulIsComputeBoundAndAnAddIsMemoryBound()
    {
        var g = Frontend.CompileText("m.palm", """
            dim a = 1024, b = 1024, c = 1024
            input x: f32[a, b]
            param w: f32[b, c] = normal(1)
            y = einsum(x[a, b], w[b, c] -> [a, c])
            z = y + y
            output z
            """);
        var local = SpmdCompiler.Compile(g).Local;
        var cost = CostModel.Predict(local, new Topology(Round(), new Mesh([])), "f32");
        double matmul = 2.0 * 1024 * 1024 * 1024 / (1e12 * 0.5);
        double add = 3.0 * 1024 * 1024 * 4 / 1e11;   // two reads and a write of 4 MiB
        Assert.Equal(matmul, cost.ComputeSeconds, 12);
        Assert.Equal(add, cost.MemoryBoundSeconds, 12);
        Assert.Equal(0, cost.CommunicationSeconds);
        // At bf16 the add moves half the bytes; the matmul runs at the bf16 peak.
        var half = CostModel.Predict(local, new Topology(Round(), new Mesh([])), "bf16");
        Assert.Equal(add / 2, half.MemoryBoundSeconds, 12);
        Assert.Equal(matmul / 2, half.ComputeSeconds, 12);
    }

    [Fact]
    public void PalmTinyMemoryMatchesTheHandCount()
    {
        // palm-tiny: vocab 256, d_model 64, heads 4 x 16, d_ff 256, 2 layers, batch 8 x seq 16.
        // Per layer: ln 64 + w_q 4096 + w_k 1024 + w_v 1024 + w_o 4096 + 3 x 16384 = 59,456; embed 16,384; ln_final 64.
        const long parameters = 16_384 + 2 * 59_456 + 64;   // 135,360
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var one = Simulator.Predict(g, new SimulationConfig { Hardware = Round(), Remat = RematPolicy.Full, DType = "f32" });
        Assert.Equal(parameters * 4, one.MemoryPerDevice["parameters"]);
        Assert.Equal(2 * parameters * 4, one.MemoryPerDevice["optimizer_state"]);
        Assert.Equal(parameters * 4, one.MemoryPerDevice["gradients"]);
        Assert.Equal(2 * 8 * 16 * 4 + 4, one.MemoryPerDevice["inputs"]);          // tokens and targets (i32), the step number
        // Every weight of palm-tiny is split over data and model: a quarter each on 2x2; the batch is halved.
        var four = Simulator.Predict(g, new SimulationConfig { Hardware = Round(), Mesh = Mesh.Parse("data=2,model=2"), Remat = RematPolicy.Full, DType = "bf16" });
        Assert.Equal(parameters, four.MemoryPerDevice["parameters"]);
        Assert.Equal(2 * parameters, four.MemoryPerDevice["optimizer_state"]);
        Assert.Equal(2 * 8 * 16 * 4 / 2 + 4, four.MemoryPerDevice["inputs"]);
        // Remat full saves each layer's input, [batch, seq, d_model] = 8 x 16 x 64 f32 per layer.
        var full = TrainingMemory.Of(TrainingCompiler.Compile(g, null, new TrainingConfig { Remat = RematPolicy.Full }));
        Assert.Equal(8 * 16 * 64 * 4, full.ResidualsPerLayerBytes);
        Assert.Equal(1, one.Devices);
        Assert.Equal(8 * 16, one.TokensPerStep);
        Assert.Equal(836_736.0 * 128, one.ModelFlopsPerStep);
    }

    [Fact]
    public void WeightGathersHideUnderComputeAndActivationCollectivesDoNot()
    {
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var dataOnly = Simulator.Predict(g, new SimulationConfig { Hardware = Round(), Mesh = Mesh.Parse("data=4") });
        Assert.True(dataOnly.Cost.CommunicationSeconds > 0);
        // data=4: weight gathers and gradient reductions are all off the critical path; only what exceeds compute shows.
        var opTime = dataOnly.Cost.ComputeSeconds + dataOnly.Cost.MemoryBoundSeconds;
        Assert.True(opTime > 0);
        Assert.True(dataOnly.Cost.ExposedCommunicationSeconds < dataOnly.Cost.CommunicationSeconds, "some of the weight traffic hides under compute");
        var model = Simulator.Predict(g, new SimulationConfig { Hardware = Round(), Mesh = Mesh.Parse("model=4") });
        var modelAxis = model.Cost.ByAxes.Single(a => a.Axes == "model");
        Assert.True(modelAxis.ExposedSeconds > 0, "the residual stream's model-axis gathers are on the critical path");
        Assert.True(modelAxis.ExposedSeconds <= modelAxis.Seconds + 1e-15);
    }

    [Fact]
    public void The540bPlanOnSixtyFourChipsDoesNotFit()
    {
        var g = Frontend.CompileFile(TestPaths.Graph("palm-540b"));
        var p = Simulator.Predict(g, new SimulationConfig { Hardware = Catalog.Get("tpu-v4"), Mesh = Mesh.Parse("pod=1,data=8,model=8"), Remat = RematPolicy.Palm });
        Assert.False(p.Fits);
        // Parameters alone: 540.35B x 4 B over 64 chips is 33.8 GB, over a 32 GiB chip.
        Assert.True(p.MemoryPerDevice["parameters"] > 540e9 * 4 / 64 * 0.99);
        Assert.True(p.MemoryTotal > p.MemoryUsable);
    }

    [Fact]
    public void ThePapersLayoutIsPredictedWithinReachOfThePublishedFigures()
    {
        // Not a fit: the model's inputs are datasheets and stated assumptions. This guards against regressions that
        // would move the prediction far from what PaLM measured (docs/simulation.md discusses the gap).
        var g = Frontend.CompileFile(TestPaths.Graph("palm-540b"));
        var p = Simulator.Predict(g, new SimulationConfig { Hardware = Catalog.Get("tpu-v4"), Mesh = Mesh.Parse("pod=2,data=256,model=12"), Remat = RematPolicy.Palm });
        Assert.True(PaperComparison.Applies(p));
        Assert.True(p.Fits);
        Assert.InRange(p.Mfu, 0.462 * 0.75, 0.462 * 1.25);
        Assert.InRange(p.Cost.CrossPodBytesPerHost, 1.3e9 * 0.75, 1.3e9 * 1.25);
        Assert.True(p.Hfu > p.Mfu);
    }
}
