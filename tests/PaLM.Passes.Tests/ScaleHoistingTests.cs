using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>
/// Scale hoisting: which scaled products move their scale onto an operand, which stay, and that the training step
/// computes the same bits with and without it (the scale is a power of two).
/// </summary>
public sealed class ScaleHoistingTests
{
    private static Graph Compile(string body) => Frontend.CompileText("scale.palm", "dim b = 4, s = 16, t = 16, d = 8, v = 32\n" + body);

    [Fact]
    public void TheScoresScaleMovesOntoTheKey()
    {
        var g = Compile("""
            input q: f32[b, s, d]
            input k: f32[b, t, d]
            input w: f32[v, d]
            input y: f32[b, s, d]
            scores = einsum(q[b, s, d], k[b, t, d] -> [b, s, t]) * 0.125
            logits = einsum(y[b, s, d], w[v, d] -> [b, s, v]) * 0.3
            again = einsum(q[b, s, d], k[b, t, d] -> [b, s, t])
            twice = again * 0.5
            output scores
            output logits
            output twice
            output again
            """);
        var (hoisted, count) = ScaleHoisting.Run(g);
        // scores: the operands are the same size (q first); logits: 0.3 is not a power of two; again is read twice.
        Assert.Equal(1, count);
        var scores = hoisted.Body.Nodes.Single(n => n.Outputs[0].Name == "scores");
        Assert.Equal("einsum", scores.Op.Name);
        var scaled = hoisted.Body.Nodes.Single(n => n.Outputs[0] == scores.Inputs[0]);
        Assert.Equal("mul", scaled.Op.Name);
        Assert.Equal("q", scaled.Inputs[0].Name);
        Assert.Equal("mul", hoisted.Body.Nodes.Single(n => n.Outputs[0].Name == "logits").Op.Name);
        Assert.Equal("mul", hoisted.Body.Nodes.Single(n => n.Outputs[0].Name == "twice").Op.Name);
    }

    [Fact]
    public void AnAnnotatedProductKeepsItsScale()
    {
        // The rewrite removes the einsum's own result; a sharding the user put on it must not vanish with it.
        var g = Frontend.CompileText("scale.palm", """
            dim b = 4, s = 16, t = 16, d = 8
            mesh m = 2
            input q: f32[b, s, d]
            input k: f32[b, t, d]
            raw = einsum(q[b, s, d], k[b, t, d] -> [b, s, t]) @shard(b: m)
            scores = raw * 0.125
            output scores
            """);
        Assert.Equal(0, ScaleHoisting.Run(g).Count);
    }

    [Fact]
    public void TrainingStepsComputeTheSameBitsWithAndWithout()
    {
        // Gradients and updated parameters too, over three steps: the key's gradient is scaled instead of the scores'.
        Rt.Initialize();
        var tiny = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        Graph Build(bool hoist) => TrainingCompiler.Compile(tiny, null, new TrainingConfig { HoistScales = hoist }).Local;
        var (on, off) = (Build(true), Build(false));
        Assert.Contains(on.Body.AllValues(), v => v.Name.EndsWith(".scaled", StringComparison.Ordinal));
        Assert.DoesNotContain(off.Body.AllValues(), v => v.Name.EndsWith(".scaled", StringComparison.Ordinal));
        var a = RoslynCompiler.CompileInMemory(Emitter.Emit(on));
        var b = RoslynCompiler.CompileInMemory(Emitter.Emit(off));
        StepInputs.AssertSameBits(a, b, initSeed: 9, dataSeed: 9);
    }

    [Fact]
    public void PalmTinyScalesTheKeyAndComputesTheSameLoss()
    {
        var graph = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var (hoisted, count) = ScaleHoisting.Run(graph);
        // The attention scores inside the layer loop, and the logits (palm-tiny's 1/√d_model is 1/8), whose smallest
        // operand is the final activations y ([8, 16, 64], against the embedding's [256, 64]).
        Assert.Equal(2, count);
        Assert.Contains(hoisted.Body.Nodes, n => n.Op.Name == "mul" && n.Inputs[0].Name == "y");
        var body = hoisted.Body.Nodes.Single(n => n.Op.HasRegion).Regions[0];
        var scaled = body.Nodes.Single(n => n.Outputs[0].Name.EndsWith(".scaled", StringComparison.Ordinal));
        Assert.Equal("k", scaled.Inputs[0].Name);   // the multi-query key, 1/heads the size of the query
        var before = RoslynCompiler.CompileInMemory(Emitter.Emit(graph));
        var after = RoslynCompiler.CompileInMemory(Emitter.Emit(hoisted));
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var p = before.InitParameters(3);
        var (tokens, targets) = Batches.Random(4, 8, 16, 256);
        Assert.Equal(before.Forward(p, [tokens, targets])[0].item<float>(), after.Forward(p, [tokens, targets])[0].item<float>());
    }
}
