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
}
