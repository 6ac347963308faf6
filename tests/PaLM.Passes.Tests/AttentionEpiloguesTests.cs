using System.Globalization;
using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Runtime;
using PaLM.Runtime.Training;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>
/// Attention's softmax and its gradient fused into the causal products that feed them (<see cref="AttentionEpilogues"/>):
/// where it applies in a training step, where it must not, and that the fused ops compute what the pairs did, for
/// operands of any values (the gradient's y included, which need not be zero above the diagonal).
/// </summary>
public sealed class AttentionEpiloguesTests
{
    private static IEnumerable<Node> Nodes(Block b) => b.Nodes.SelectMany(n => n.Regions.SelectMany(Nodes).Prepend(n));

    // head_dim 16: the scores' scale 1/4 is a power of two, which ScaleHoisting moves onto the keys, so the causal
    // softmax reads the product itself (with 1/√8 a multiply stands between them, and the pair stays apart).
    private static Graph Palm(long seq) => SmallPalm.Graph($"epilogues-{seq}", seq, headDim: 16);

    [Theory]
    [InlineData("data=1,model=1", "none", 1)]
    [InlineData("data=2,model=2", "none", 1)]
    [InlineData("data=1,model=1", "full", 2)]    // the backward loop recomputes the probabilities
    public void EachLayersSoftmaxAndItsGradientJoinTheirProducts(string mesh, string remat, int forward)
    {
        var compiled = TrainingCompiler.Compile(Palm(256), Mesh.Parse(mesh), new TrainingConfig { Remat = RematPolicy.Parse(remat) });
        var nodes = Nodes(compiled.Local.Body).ToList();
        Assert.Equal(forward, nodes.Count(n => n.Op.Name == "causal_einsum_softmax"));
        Assert.Single(nodes, n => n.Op.Name == "causal_einsum_softmax_grad");
        Assert.DoesNotContain(nodes, n => n.Op.Name is "causal_softmax" or "softmax_grad");
        // Probabilities times values and the four products of the gradients that contract a label stay as they were.
        Assert.Equal(remat == "full" ? 5 : 4, nodes.Count(n => n.Op.Name == "causal_einsum"));
    }

    private const string Dims = "dim b = 2, s = {0}, t = {1}, h = 3, d = 4\ninput q: f32[b, s, h, d]\ninput k: f32[b, t, d]\n";

    [Fact]
    public void AProductReadElsewhereStays()
    {
        var g = Frontend.CompileText("e.palm", string.Format(CultureInfo.InvariantCulture, Dims, 8, 8)
            + "x = causal_einsum(q[b, s, h, d], k[b, t, d] -> [b, h, s, t], query=s, key=t, blocks=2)\n"
            + "p = causal_softmax(x, query=s, key=t)\nu = x * 2\noutput p\noutput u\n");
        Assert.Equal(0, AttentionEpilogues.Run(g).Count);
    }

    [Theory]
    [InlineData(1, 1, 1, 1)]
    [InlineData(2, 9, 9, 2)]
    [InlineData(3, 37, 41, 4)]      // more keys than queries
    public void TheFusedOpsComputeThePairs(int seed, int s, int t, int blocks)
    {
        var g = Frontend.CompileText("e.palm", string.Format(CultureInfo.InvariantCulture, Dims, s, t)
            + "input dout: f32[b, s, h, d]\ninput v: f32[b, t, d]\ninput y: f32[b, h, s, t]\n"
            + $"x = causal_einsum(q[b, s, h, d], k[b, t, d] -> [b, h, s, t], query=s, key=t, blocks={blocks})\n"
            + "p = causal_softmax(x, query=s, key=t)\n"
            + $"dp = causal_einsum(dout[b, s, h, d], v[b, t, d] -> [b, h, s, t], query=s, key=t, blocks={blocks})\n"
            + "dx = softmax_grad(dp, y, over=t)\noutput p\noutput dx\n");
        var (fused, count) = AttentionEpilogues.Run(g);
        Assert.Equal(2, count);
        Assert.Contains(fused.Body.Nodes, n => n.Op.Name == "causal_einsum_softmax");
        Assert.Contains(fused.Body.Nodes, n => n.Op.Name == "causal_einsum_softmax_grad");
        var pairs = RoslynCompiler.CompileInMemory(Emitter.Emit(g));
        var one = RoslynCompiler.CompileInMemory(Emitter.Emit(fused));
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)seed);
        // y is random, not zero above the diagonal: the fused gradient must match softmax_grad for any y.
        Tensor[] inputs = [randn([2, s, 3, 4], generator: gen), randn([2, t, 4], generator: gen), randn([2, s, 3, 4], generator: gen),
            randn([2, t, 4], generator: gen), randn([2, 3, s, t], generator: gen)];
        var expected = pairs.Forward([], inputs);
        var actual = one.Forward([], inputs);
        Assert.True(actual[0].eq(expected[0]).all().item<bool>(), "the probabilities differ");
        Assert.True(actual[1].allclose(expected[1], rtol: 1e-5, atol: 1e-5), $"max difference {(actual[1] - expected[1]).abs().max().item<float>()}");
    }

    [Fact]
    public void TheTrainingStepIsUnchanged()
    {
        var graph = Palm(160);
        IGraphProgram Program(bool fused) => RoslynCompiler.CompileInMemory(Emitter.Emit(
            TrainingCompiler.Compile(graph, null, new TrainingConfig { AttentionEpilogues = fused }).Local));
        var with = Program(true);
        var without = Program(false);
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var p = with.InitParameters(seed: 5);
        var inputs = StepInputs.For(with, ByteCorpus.Default(), seed: 3, step: 1);
        var a = with.Forward(p, inputs);
        var b = without.Forward(p, inputs);
        for (int i = 0; i < a.Length; i++)
            Assert.True(a[i].allclose(b[i], rtol: 1e-4, atol: 1e-6), $"{with.Outputs[i].Name}: max difference {(a[i] - b[i]).abs().max().item<float>()}");
        // The forward's probabilities are the same bits, so is the loss.
        int loss = with.Outputs.Select(o => o.Name).ToList().IndexOf("loss");
        Assert.True(loss >= 0 && a[loss].eq(b[loss]).all().item<bool>(), "the loss differs");
    }
}
