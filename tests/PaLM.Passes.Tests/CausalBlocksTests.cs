using PaLM.CodeGen;
using PaLM.IR;
using PaLM.Runtime;
using PaLM.Runtime.Training;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>
/// Causal block skipping: which of attention's einsums the pass turns into causal_einsum (all six of a layer, under
/// each remat policy), that nothing else is touched, and that a whole training step computes what it computes without
/// the pass, on a sequence long enough to be split into blocks.
/// </summary>
public sealed class CausalBlocksTests
{
    private static IEnumerable<Node> Nodes(Block b) => b.Nodes.SelectMany(n => n.Regions.SelectMany(Nodes).Prepend(n));

    private static Graph Palm(long seq) => SmallPalm.Graph($"causal-{seq}", seq, headDim: 8);

    [Theory]
    [InlineData("none", 6)]     // all six: scores, probabilities · values, and the four gradients
    [InlineData("full", 8)]     // the backward loop recomputes the scores and the probabilities times the values
    public void AttentionsEinsumsSkipTheUpperTriangle(string remat, int expected)
    {
        // Without the softmax epilogues, which would absorb the scores' and the probabilities' cotangent's products.
        var compiled = TrainingCompiler.Compile(Palm(256), null, new TrainingConfig { Remat = RematPolicy.Parse(remat), AttentionEpilogues = false });
        var nodes = Nodes(compiled.Local.Body).ToList();
        var causal = nodes.Where(n => n.Op.Name == "causal_einsum").ToList();
        Assert.Equal(expected, causal.Count);
        Assert.All(causal, n => Assert.Equal(4, n.Attr<IntAttr>("blocks").Value));     // 256 / 64
        // The projections, the logits and the MLP stay plain einsums.
        Assert.All(nodes.Where(n => n.Op.Name == "einsum"), n => Assert.DoesNotContain("kseq", n.Attr<DimsAttr>("output").Names));
    }

    [Fact]
    public void TheTrainingStepIsUnchanged()
    {
        var graph = Palm(160);
        IGraphProgram Program(bool blocks) => RoslynCompiler.CompileInMemory(Emitter.Emit(
            TrainingCompiler.Compile(graph, null, new TrainingConfig { CausalBlocks = blocks }).Local));
        var with = Program(true);
        var without = Program(false);
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var p = with.InitParameters(seed: 5);
        int In(string name) => with.Inputs.Select(i => i.Name).ToList().IndexOf(name);
        var shape = with.Inputs[In("tokens")].Shape;
        var (tokens, targets) = ByteCorpus.Default().Batch(3, 1, shape[0], shape[1]);
        var inputs = new Tensor[with.Inputs.Count];
        inputs[In("tokens")] = tokens;
        inputs[In("targets")] = targets;
        inputs[In("step")] = tensor(1f, ScalarType.Float32);
        var a = with.Forward(p, inputs);
        var b = without.Forward(p, inputs);
        for (int i = 0; i < a.Length; i++)
            Assert.True(a[i].allclose(b[i], rtol: 1e-4, atol: 1e-6), $"{with.Outputs[i].Name}: max difference {(a[i] - b[i]).abs().max().item<float>()}");
    }
}
