using PaLM.Runtime;
using PaLM.Runtime.Training;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>The inputs of a compiled training step, for tests that run two programs side by side step after step.</summary>
internal static class StepInputs
{
    /// <summary>Step <paramref name="step"/>'s batch of <paramref name="corpus"/> (drawn with <paramref name="seed"/>)
    /// and the step number, each at the position <paramref name="program"/> lists it.</summary>
    public static Tensor[] For(IGraphProgram program, ByteCorpus corpus, long seed, long step)
    {
        int In(string name) => program.Inputs.Select(i => i.Name).ToList().IndexOf(name);
        var shape = program.Inputs[In("tokens")].Shape;
        var (tokens, targets) = corpus.Batch(seed, step, shape[0], shape[1]);
        var inputs = new Tensor[program.Inputs.Count];
        inputs[In("tokens")] = tokens;
        inputs[In("targets")] = targets;
        inputs[In("step")] = tensor((float)step, ScalarType.Float32);
        return inputs;
    }

    /// <summary>
    /// Runs <paramref name="a"/> and <paramref name="b"/> (two compilations of one training step) for
    /// <paramref name="steps"/> steps from the same initial parameters (<paramref name="initSeed"/>) on the same batches
    /// (<paramref name="dataSeed"/>), each feeding its own updates back, and asserts every output equal bit for bit at
    /// every step.
    /// </summary>
    public static void AssertSameBits(IGraphProgram a, IGraphProgram b, long initSeed, long dataSeed, int steps = 3)
    {
        using var scope = NewDisposeScope();
        var pa = a.InitParameters(seed: initSeed);
        var pb = b.InitParameters(seed: initSeed);
        var corpus = ByteCorpus.Default();
        for (long step = 1; step <= steps; step++)
        {
            var outA = a.Forward(pa, For(a, corpus, dataSeed, step));
            var outB = b.Forward(pb, For(b, corpus, dataSeed, step));
            for (int i = 0; i < outA.Length; i++)
            {
                Assert.True(outA[i].eq(outB[i]).all().item<bool>(), $"step {step}: output {a.Outputs[i].Name} differs");
                if (a.Outputs[i].Updates is var u and >= 0) (pa[u], pb[u]) = (outA[i], outB[i]);
            }
        }
    }
}
