using PaLM.Dsl;
using PaLM.IR;

namespace PaLM.Spmd.Tests;

/// <summary>Collective counts of the paper's layout, the golden palm-tiny 2x2 plan, the 540B plan, and sharding errors.</summary>
public sealed class PlanTests
{
    private static SpmdProgram Tiny(string mesh) => SpmdCompiler.Compile(Frontend.CompileFile(TestPaths.Graph("palm-tiny")), Mesh.Parse(mesh));

    [Theory]
    [InlineData("data=2,model=2")]
    [InlineData("pod=2,data=2,model=2")]
    [InlineData("data=4,model=2")]
    public void ThePapersLayoutHasExactlyTheExpectedCollectivesPerLayer(string mesh)
    {
        var spmd = Tiny(mesh);
        var layers = spmd.Source.DimsByName["layers"].Size;
        var inLayer = spmd.Collectives.Where(c => c.CountPerStep == layers).ToList();
        string Key(CollectiveRecord c) => $"{c.KindName} {string.Join(",", c.Axes)} {c.Tensor}";
        var expected = new[]
        {
            // FSDP: each weight gathered over data before its matmul (k/v and the layer norm scale over data and model).
            "all-gather data w_q.1", "all-gather data w_o.1", "all-gather data w_gate.1", "all-gather data w_up.1", "all-gather data w_down.1",
            "all-gather data,model w_k.1", "all-gather data,model w_v.1", "all-gather data,model ln.1",
            // The residual stream's d_model is split over model: gathered for the layer norm ...
            "all-gather model x.1",
            // ... and the two model-parallel output projections' partial sums scattered back onto it.
            "reduce-scatter model attn_out", "reduce-scatter model mlp",
        };
        Assert.Equal(expected.Order(StringComparer.Ordinal), inLayer.Select(Key).Order(StringComparer.Ordinal));
        // Outside the loop: the embedding gathered once over data (for the lookup and the logits), the residual before
        // the final norm, the final norm's scale, the logits' partial sum over model and the loss's over the batch axes.
        // (Which of embed or y the logits matmul gathers depends on their sizes on the mesh; the golden plan pins 2x2.)
        var outside = spmd.Collectives.Where(c => c.CountPerStep == 1).Select(Key).ToList();
        Assert.Contains("all-gather model x.3", outside);
        Assert.Contains("all-gather data,model ln_final", outside);
        Assert.Contains("all-reduce model logits", outside);
        Assert.Single(outside, k => k.StartsWith("all-reduce", StringComparison.Ordinal) && k.EndsWith(" loss", StringComparison.Ordinal));
        Assert.All(spmd.Collectives, c => Assert.False(string.IsNullOrEmpty(c.Reason)));
        Assert.All(spmd.Collectives, c => Assert.NotNull(c.Loc));
    }

    [Fact]
    public void GoldenPlanForPalmTinyOnTwoByTwo()
    {
        Golden.Check("tests/PaLM.Spmd.Tests/golden/palm-tiny.2x2.plan.txt", ShardingPlan.Of(Tiny("data=2,model=2")).ToText(), "plan text");
    }

    [Fact]
    public void GoldenPerDeviceIrForPalmTinyOnTwoByTwo()
    {
        Golden.Check("tests/PaLM.Spmd.Tests/golden/palm-tiny.2x2.ir.txt", Printer.Print(Tiny("data=2,model=2").Local), "per-device IR");
    }

    [Fact]
    public void Palm540bOnThePapersMeshSplitsEveryParameter3072Ways()
    {
        var g = Frontend.CompileFile(TestPaths.Graph("palm-540b"));
        var plan = ShardingPlan.Of(SpmdCompiler.Compile(g, Mesh.Parse("pod=2,data=256,model=12")));
        Assert.Equal(6144, plan.Mesh.DeviceCount);
        Assert.Equal(plan.ParameterBytesTotal / 3072.0, plan.ParameterBytesPerDevice, 0);
        foreach (var p in plan.Tensors.Where(t => t.Kind == "parameter"))
        {
            var axes = p.Sharding.AllAxes.ToList();
            Assert.Contains("data", axes);
            Assert.Contains("model", axes);
            Assert.DoesNotContain("pod", axes); // pods hold full copies: data parallel across them
        }
        string Layout(string name) => plan.Tensors.Single(t => t.Name == name).ShardingText;
        Assert.Equal("{batch:(pod,data), heads:model}", Layout("q"));
        Assert.Equal("{batch:(pod,data), d_ff:model}", Layout("gate"));
        Assert.Equal("{batch:(pod,data), d_model:model}", Layout("x"));
    }

    [Fact]
    public void PlanningDoesNotDependOnTheDeviceCount()
    {
        // SPMD: one program whatever the mesh size; the per-device graph has the same nodes on 8 and on 6144 devices.
        var g = Frontend.CompileFile(TestPaths.Graph("palm-540b"));
        var small = SpmdCompiler.Compile(g, Mesh.Parse("data=4,model=2"));
        var big = SpmdCompiler.Compile(g, Mesh.Parse("pod=2,data=256,model=12"));
        static int Count(Block b) => b.Nodes.Sum(n => 1 + n.Regions.Sum(Count));
        Assert.Equal(Count(small.Local.Body), Count(big.Local.Body));
    }

    private static string CompileError(string dsl, string? mesh = null)
    {
        var g = Frontend.CompileText("t.palm", dsl);
        var e = Assert.Throws<ShardingException>(() => SpmdCompiler.Compile(g, mesh is null ? null : Mesh.Parse(mesh)));
        return e.Message;
    }

    [Fact]
    public void AnUnevenSplitIsRefusedNamingTensorDimAxisAndLine()
    {
        var msg = CompileError("dim v = 10, d = 4\nmesh model = 4\nparam w: f32[v, d] = normal(1) @shard(v: model)\ny = sum(w, over=[v, d])\noutput y\n");
        Assert.StartsWith("t.palm:3:", msg);
        Assert.Contains("tensor 'w'", msg);
        Assert.Contains("dim 'v' (size 10)", msg);
        Assert.Contains("mesh axis 'model'", msg);
        Assert.Contains("refused", msg);
    }

    [Fact]
    public void AnUnevenSplitAfterAMeshOverrideIsRefused()
    {
        var msg = CompileError("dim b = 6\nmesh data = 2\ninput x: f32[b] @shard(b: data)\ny = sum(x, over=b)\noutput y\n", "data=4");
        Assert.Contains("tensor 'x': dim 'b' (size 6) does not divide evenly over mesh axis 'data'", msg);
    }
}
