using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using PaLM.Runtime.Training;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>
/// Per-layer results kept as one tensor per layer (<see cref="LayerStacks"/>, <c>PaLM.Runtime.LayerStack</c>): which
/// results qualify, which are still copied, and that a training step computes the same bits with and without them (and
/// without fused loops writing into their joins, <see cref="ConcatDestinations"/>, whose results such stacks keep).
/// </summary>
[Collection(nameof(CausalPathCollection))]
public sealed class LayerStackTests
{
    private static readonly Lazy<Graph> s_tiny = new(() => Frontend.CompileFile(TestPaths.Graph("palm-tiny")));

    [Fact]
    public void ForwardActivationsAreKeptAndTheBackwardTakesThem()
    {
        var compiled = TrainingCompiler.Compile(s_tiny.Value, null, new TrainingConfig());
        var text = Emitter.Emit(compiled.Local).Text;
        // What the forward loop saves is kept per layer, and the backward loop, its one reader, takes each layer.
        Assert.Contains("var probs_saved_1 = Rt.Layers(2L);", text);
        Assert.Contains("Rt.SetLayer(probs_saved_1, layers_i, probs);", text);
        Assert.Contains("var probs_saved = Rt.TakeLayer(probs_saved_1, layers_i_1);", text);
        // The carried input is the loop's operand in the first iteration, which the iteration does not own: copied.
        // In later ones it is the residual the previous iteration made, which nothing writes afterwards: kept as is.
        Assert.Matches(@"if \(layers_i == 0L\)\s+Rt\.SetLayerCopy\(x_1_saved_1, layers_i, x_1\);\s+else\s+Rt\.SetLayer\(x_1_saved_1, layers_i, x_1\);", text);
        // Gradients are read whole by the optimizer: stacked buffers, as before.
        Assert.Contains("var d_w_q = Rt.Empty(", text);
        Assert.DoesNotContain("Rt.TakeLayer(d_w_q", text);

        var without = Emitter.Emit(compiled.Local, options: new CodeGenOptions { KeepLayerResults = false }).Text;
        Assert.DoesNotContain("Rt.Layers(", without);
        Assert.DoesNotContain("TakeLayer", without);
    }

    [Theory]
    [InlineData("none", true, true)]
    [InlineData("none", false, false)]
    [InlineData("full", true, true)]
    [InlineData("dots", true, false)]
    public void StepsComputeTheSameBitsWithAndWithoutKeptLayersAndJoinsWrittenInPlace(string remat, bool fuse, bool donate)
    {
        Rt.Initialize();
        // Bit for bit needs one summation order in both programs. A copied stack holds a saved tensor in its logical
        // layout where a kept layer keeps the layout its op wrote, and causal attention's direct BLAS plan follows the
        // operands' memory order (one product over [s, h] rows where that is how they lie), so the two programs would
        // add the same products in different orders (2e-4 of the largest momentum after two steps). The general path's
        // order does not depend on the layout; the direct plan is compared with the full product in CausalEinsumTests.
        var before = Environment.GetEnvironmentVariable("PALMC_CAUSAL");
        Environment.SetEnvironmentVariable("PALMC_CAUSAL", "general");
        try
        {
            CompareSteps(remat, fuse, donate);
        }
        finally
        {
            Environment.SetEnvironmentVariable("PALMC_CAUSAL", before);
        }
    }

    private static void CompareSteps(string remat, bool fuse, bool donate)
    {
        var compiled = TrainingCompiler.Compile(s_tiny.Value, null, new TrainingConfig { Fuse = fuse, Remat = RematPolicy.Parse(remat) });
        var kept = RoslynCompiler.CompileInMemory(Emitter.Emit(compiled.Local, options: new CodeGenOptions { DonateUpdatedArguments = donate }));
        var copied = RoslynCompiler.CompileInMemory(Emitter.Emit(compiled.Local,
            options: new CodeGenOptions { DonateUpdatedArguments = donate, KeepLayerResults = false, ConcatInPlace = false }));
        StepInputs.AssertSameBits(kept, copied, initSeed: 5, dataSeed: 7);
    }
}

/// <summary>Tests that set <c>PALMC_CAUSAL</c> for the whole process run alone, so no other test's programs change path
/// under them.</summary>
[CollectionDefinition(nameof(CausalPathCollection), DisableParallelization = true)]
public sealed class CausalPathCollection;
