using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>softmax(causal_mask(x)) becomes one causal_softmax where nothing else reads the mask, and computes the same.</summary>
public sealed class CausalSoftmaxTests
{
    private static IEnumerable<Node> Nodes(Block b) => b.Nodes.SelectMany(n => n.Regions.SelectMany(Nodes).Prepend(n));

    [Theory]
    [InlineData("data=1,model=1")]
    [InlineData("data=2,model=2")]
    public void EveryLayersAttentionSoftmaxIsFused(string mesh)
    {
        var compiled = TrainingCompiler.Compile(Frontend.CompileFile(TestPaths.Graph("palm-tiny")), Mesh.Parse(mesh), new TrainingConfig { AttentionEpilogues = false });
        var nodes = Nodes(compiled.Local.Body).ToList();
        Assert.Single(nodes, n => n.Op.Name == "causal_softmax");          // once in the layer loop's body
        Assert.DoesNotContain(nodes, n => n.Op.Name is "causal_mask" or "softmax");
        Assert.Single(nodes, n => n.Op.Name == "softmax_grad");            // its VJP, in the backward loop
    }

    [Fact]
    public void AMaskReadElsewhereOrFilledWithZeroStays()
    {
        const string dims = "dim q = 5, k = 5\ninput x: f32[q, k]\n";
        var shared = Frontend.CompileText("m.palm", dims + "m = causal_mask(x, query=q, key=k)\np = softmax(m, over=k)\nu = m * 2\noutput p\noutput u\n");
        Assert.Equal(0, CausalSoftmax.Run(shared).Count);
        var zero = Frontend.CompileText("m.palm", dims + "p = softmax(causal_mask(x, query=q, key=k, fill=0), over=k)\noutput p\n");
        Assert.Equal(0, CausalSoftmax.Run(zero).Count);
        var otherDim = Frontend.CompileText("m.palm", dims + "p = softmax(causal_mask(x, query=q, key=k), over=q)\noutput p\n");
        Assert.Equal(0, CausalSoftmax.Run(otherDim).Count);
    }

    [Theory]
    [InlineData(1, 1, 3)]
    [InlineData(2, 7, 7)]
    [InlineData(3, 33, 40)]
    public void TheFusedSoftmaxComputesTheMaskedOne(int seed, int q, int k)
    {
        var g = Frontend.CompileText("m.palm", $"dim b = 3, q = {q}, k = {k}\ninput x: f32[b, q, k]\np = softmax(causal_mask(x * 4, query=q, key=k), over=k)\noutput p\n");
        var (fused, count) = CausalSoftmax.Run(g);
        Assert.Equal(1, count);
        var a = RoslynCompiler.CompileInMemory(Emitter.Emit(g));
        var b = RoslynCompiler.CompileInMemory(Emitter.Emit(fused));
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var x = randn([3, q, k], generator: new Generator((ulong)seed));
        var expected = a.Forward([], [x])[0];
        var actual = b.Forward([], [x])[0];
        Assert.True(actual.allclose(expected, rtol: 1e-5, atol: 1e-6), $"max difference {(actual - expected).abs().max().item<float>()}");
    }
}
