using PaLM.Reference;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

public sealed class ReferenceModelTests
{
    public ReferenceModelTests() => TestUtil.Init();

    public static TheoryData<PalmConfig, long> Configs => new()
    {
        { new PalmConfig(Vocab: 32, DModel: 16, Heads: 2, HeadDim: 8, DFF: 24, Layers: 1), 1 },
        { new PalmConfig(Vocab: 50, DModel: 24, Heads: 4, HeadDim: 6, DFF: 40, Layers: 2), 2 },
        { new PalmConfig(Vocab: 17, DModel: 8, Heads: 1, HeadDim: 4, DFF: 16, Layers: 3, Eps: 1e-5, ZLoss: 1e-3), 3 },
    };

    /// <summary>The same PaLM written against the runtime facade, the way generated code composes it.</summary>
    private static Tensor LossViaRt(PalmConfig c, IReadOnlyDictionary<string, Tensor> w, Tensor tokens, Tensor targets)
    {
        using var scope = Rt.Scope();
        var x = Rt.Gather(w["embed"], tokens, 0);                                   // [B, S, D]
        var scale = Rt.Constant(1 / Math.Sqrt(c.HeadDim), ScalarType.Float32);
        for (long l = 0; l < c.Layers; l++)
        {
            Tensor W(string name) => Rt.Select(w[name], 0, l);
            var h = Rt.LayerNorm(x, W("ln"), c.Eps);
            var q = Rt.Rope(Rt.Einsum("bsd,dhk->bshk", h, W("w_q")), 1, 3);
            var k = Rt.Rope(Rt.Einsum("bsd,dk->bsk", h, W("w_k")), 1, 2);
            var v = Rt.Einsum("bsd,dk->bsk", h, W("w_v"));
            var scores = Rt.CausalMask(Rt.Mul(Rt.Einsum("bshk,btk->bhst", q, k), scale), 2, 3);
            var attn = Rt.Einsum("bhst,btk->bshk", Rt.Softmax(scores, 3), v);
            var attnOut = Rt.Einsum("bshk,hkd->bsd", attn, W("w_o"));
            var gate = Rt.Silu(Rt.Einsum("bsd,df->bsf", h, W("w_gate")));
            var mlp = Rt.Einsum("bsf,fd->bsd", Rt.Mul(gate, Rt.Einsum("bsd,df->bsf", h, W("w_up"))), W("w_down"));
            x = Rt.Add(Rt.Add(x, attnOut), mlp);
        }
        x = Rt.LayerNorm(x, w["ln_final"], c.Eps);
        var logits = Rt.Div(Rt.Einsum("bsd,vd->bsv", x, w["embed"]), Rt.Constant(Math.Sqrt(c.DModel), ScalarType.Float32));
        return Rt.Keep(Rt.Mean(Rt.CrossEntropy(logits, targets, 2, c.ZLoss), [0, 1]));
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public void RtCompositionMatchesReferenceLoss(PalmConfig c, long seed)
    {
        using var scope = Rt.Scope();
        var weights = PalmModel.RandomWeights(c, seed, std: 1.0);
        using var model = new PalmModel(c, weights);
        var (tokens, targets) = Batches.Random(seed + 100, 2, 7, c.Vocab);
        var expected = model.Loss(tokens, targets).item<float>();
        var actual = LossViaRt(c, weights, tokens, targets).item<float>();
        Assert.True(Math.Abs(expected - actual) <= 1e-5 * Math.Abs(expected), $"reference {expected}, via Rt {actual}");
        // std-1 weights give peaked logits, so the comparison is not of two near-uniform losses.
        Assert.True(Math.Abs(expected - Math.Log(c.Vocab)) > 0.1, $"loss {expected} is too close to ln(vocab)");
    }

    [Fact]
    public void LossAtInitIsNearLogVocab()
    {
        using var scope = Rt.Scope();
        var c = new PalmConfig(Vocab: 64, DModel: 32, Heads: 4, HeadDim: 8, DFF: 64, Layers: 2);
        using var model = new PalmModel(c, PalmModel.RandomWeights(c, 5));
        var (tokens, targets) = Batches.Random(6, 4, 16, c.Vocab);
        var loss = model.Loss(tokens, targets).item<float>();
        Assert.InRange(loss, Math.Log(c.Vocab) - 0.02, Math.Log(c.Vocab) + 0.02);
    }

    [Fact]
    public void WeightsRoundTripAndGradientsAreStacked()
    {
        using var scope = Rt.Scope();
        var c = new PalmConfig(Vocab: 20, DModel: 8, Heads: 2, HeadDim: 4, DFF: 12, Layers: 2);
        var weights = PalmModel.RandomWeights(c, 8, std: 0.1);
        using var model = new PalmModel(c, weights);
        var back = model.Weights();
        Assert.Equal(PalmModel.WeightNames, back.Keys);
        foreach (var name in PalmModel.WeightNames)
            TestUtil.AssertClose(weights[name], back[name], 0, 0);
        Assert.Equal(c.Layers * 8 + 2, model.parameters().Count());

        var (tokens, targets) = Batches.Random(9, 2, 5, c.Vocab);
        model.Loss(tokens, targets).backward();
        var grads = model.Gradients();
        foreach (var (name, shape) in PalmModel.Shapes(c))
        {
            Assert.Equal(shape, grads[name].shape);
            Assert.True(grads[name].abs().sum().item<float>() > 0, name);
        }
    }

    [Fact]
    public void RejectsWrongShapes()
    {
        using var scope = Rt.Scope();
        var c = new PalmConfig(Vocab: 20, DModel: 8, Heads: 2, HeadDim: 4, DFF: 12, Layers: 2);
        var weights = PalmModel.RandomWeights(c, 8);
        weights["w_k"] = zeros(2, 8, 5);
        Assert.Contains("w_k", Assert.Throws<ArgumentException>(() => new PalmModel(c, weights)).Message);
    }
}
