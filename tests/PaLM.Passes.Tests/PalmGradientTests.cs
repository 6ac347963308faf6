using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Reference;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>
/// The whole palm-tiny gradient from palmc's autodiff (generated C#) against TorchSharp autograd on the hand-written
/// eager PaLM with the same weights and batch: within 1e-4 relative (normwise per parameter) in fp32, under every
/// remat policy.
/// </summary>
public sealed class PalmGradientTests
{
    public static TheoryData<string> Policies => new() { "none", "full", "dots", "palm" };

    [Theory]
    [MemberData(nameof(Policies))]
    public void PalmTinyGradientMatchesAutograd(string policy)
    {
        Rt.Initialize();
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var grad = Autodiff.GradientGraph(g, policy: RematPolicy.Parse(policy));
        var program = RoslynCompiler.CompileInMemory(Emitter.Emit(grad));
        using var scope = NewDisposeScope();
        const long seed = 5;
        var init = program.InitParameters(seed);
        var config = ReferenceRunner.ConfigFrom(program)!;
        var tokensSpec = program.Inputs.First(i => i.Name == "tokens");
        var (tokens, targets) = Batches.Random(seed + 1, tokensSpec.Shape[0], tokensSpec.Shape[1], config.Vocab);
        var outs = program.Forward(init, [tokens, targets]);

        var weights = program.Parameters.Select((p, i) => (p.Name, init[i])).ToDictionary(p => p.Name, p => p.Item2);
        using var model = new PalmModel(config, weights);
        var loss = model.Loss(tokens, targets);
        loss.backward();
        var expected = model.Gradients();

        Assert.Equal(loss.item<float>(), outs[0].item<float>(), 4);
        for (int i = 0; i < program.Parameters.Count; i++)
        {
            var name = program.Parameters[i].Name;
            var err = TestMath.RelErr(outs[i + 1], expected[name]);
            Assert.True(err < 1e-4, $"{policy}: d_{name} differs from autograd by {err:E2} (normwise relative)");
        }
    }
}

internal static class TestMath
{
    /// <summary>max|a - b| / max|b|.</summary>
    public static double RelErr(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        var a64 = a.to_type(ScalarType.Float64);
        var b64 = b.to_type(ScalarType.Float64);
        return a64.sub(b64).abs().max().item<double>() / (b64.abs().max().item<double>() + 1e-30);
    }
}
