using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;

namespace PaLM.Passes.Tests;

/// <summary>
/// Sibling fusion of layer norm's two cotangents (<see cref="LayerNormSiblings"/>): every layer norm of a training step
/// gets one <c>Rt.LayerNormGrads</c> call for both, and the step computes the same bits with and without it.
/// </summary>
public sealed class LayerNormSiblingsTests
{
    [Fact]
    public void EachLayerNormsTwoCotangentsAreOneCallAndTheStepKeepsItsBits()
    {
        Rt.Initialize();
        var local = TrainingCompiler.Compile(Frontend.CompileFile(TestPaths.Graph("palm-tiny")), null, new TrainingConfig()).Local;
        var siblings = new LayerNormSiblings(local);
        int dx = 0, paired = 0;
        foreach (var n in local.Body.AllNodes().Where(n => n.Op.Name == "layernorm_dx"))
        {
            dx++;
            if (siblings.ScaleOf(n) is { } dscale)
            {
                paired++;
                Assert.True(siblings.Absorbed(dscale));
                Assert.Same(n.Inputs[0], dscale.Inputs[0]);
            }
        }
        Assert.Equal(2, dx);            // the layers' (in the loop) and the final one's
        Assert.Equal(dx, paired);

        var withSource = Emitter.Emit(local);
        Assert.Equal(2, System.Text.RegularExpressions.Regex.Matches(withSource.Text, @"Rt\.LayerNormGrads\(").Count);
        Assert.DoesNotContain("Rt.LayerNormDScale(", withSource.Text);
        var with = RoslynCompiler.CompileInMemory(withSource);
        var without = RoslynCompiler.CompileInMemory(Emitter.Emit(local, options: new CodeGenOptions { LayerNormSiblings = false }));
        StepInputs.AssertSameBits(with, without, initSeed: 3, dataSeed: 5);
    }
}
