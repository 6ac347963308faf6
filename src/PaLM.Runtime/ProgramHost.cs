using System.Globalization;
using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>The entry point of compiled programs: initializes parameters, makes a batch, runs the graph, prints results.</summary>
public static class ProgramHost
{
    /// <summary>
    /// The <c>Main</c> of a compiled program: <c>dotnet graph.dll [--seed N]</c> prints the loss on a seeded batch; a
    /// training step (<c>palmc compile --train</c>) trains instead:
    /// <c>dotnet graph.dll [--steps N] [--seed N] [--data PATH] [--checkpoint DIR]</c>. Errors print one line and exit 1.
    /// </summary>
    public static int Main(IGraphProgram program, string[] args)
    {
        var isTraining = program.Outputs.Any(o => o.Updates >= 0);
        var options = new Dictionary<string, string>(StringComparer.Ordinal);
        string[] known = isTraining ? ["--seed", "--steps", "--data", "--checkpoint"] : ["--seed"];
        for (int i = 0; i < args.Length; i += 2)
        {
            if (i + 1 >= args.Length || !known.Contains(args[i]))
            {
                Console.Error.WriteLine(isTraining
                    ? $"usage: dotnet {program.Name}.dll [--steps N] [--seed N] [--data PATH] [--checkpoint DIR]"
                    : $"usage: dotnet {program.Name}.dll [--seed N]");
                return 2;
            }
            options[args[i]] = args[i + 1];
        }
        long Long(string key, long fallback)
        {
            if (!options.TryGetValue(key, out var text)) return fallback;
            return long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v >= 0
                ? v : throw new ArgumentException($"{key}: '{text}' is not a non-negative integer");
        }
        try
        {
            if (!isTraining) return RunLoss(program, Long("--seed", 0));
            var corpus = options.TryGetValue("--data", out var data) ? Training.ByteCorpus.FromFile(data) : Training.ByteCorpus.Default();
            Training.Trainer.Run(program, new Training.TrainerOptions
            {
                Steps = Long("--steps", 100),
                Seed = Long("--seed", 0),
                Corpus = corpus,
                CheckpointDir = options.GetValueOrDefault("--checkpoint"),
            }, r => Console.WriteLine(r.Format()), Console.Error.WriteLine);
            return 0;
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or ArgumentException or IOException)
        {
            Console.Error.WriteLine($"{program.Name}: error: {e.Message}");
            return 1;
        }
    }

    /// <summary>
    /// Runs <paramref name="program"/> once on parameters from <paramref name="seed"/> and a random batch from
    /// <c>seed + 1</c> (inputs named "tokens" and "targets"; the vocabulary size comes from the parameter with a dim named
    /// "vocab"). Prints <c>loss = …</c> for a scalar output named "loss", else every scalar output as <c>name = value</c>.
    /// </summary>
    /// <returns>The process exit code (0).</returns>
    public static int RunLoss(IGraphProgram program, long seed = 0, TextWriter? output = null)
    {
        output ??= Console.Out;
        var loss = program.Outputs.Select((o, i) => (o, i)).Where(p => p.o.Name == "loss" && p.o.Shape.Length == 0).ToList();
        var shown = loss.Count == 1 ? loss : program.Outputs.Select((o, i) => (o, i)).Where(p => p.o.Shape.Length == 0).ToList();
        var values = ScalarOutputs(program, seed, shown.Select(s => s.i).ToArray());
        for (int k = 0; k < shown.Count; k++)
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{shown[k].o.Name} = {values[k]:F6}"));
        return 0;
    }

    /// <summary>
    /// Runs the program once on every device of its mesh (in-process virtual devices, one thread each) on parameters
    /// from <paramref name="seed"/> and a batch from <c>seed + 1</c>, and returns the scalar outputs at
    /// <paramref name="indices"/>. Every device must agree on them (they are replicated after the program's
    /// all-reduces); a disagreement is an error, never averaged away.
    /// </summary>
    public static double[] ScalarOutputs(IGraphProgram program, long seed, int[] indices)
    {
        Rt.Initialize();
        var perDevice = InProcessMesh.Run(program.Mesh, device =>
        {
            using var scope = NewDisposeScope();
            var parameters = program.InitParameters(device, seed);
            var inputs = MakeInputs(program, seed + 1).Select((t, i) => Rt.ShardOf(device, t, program.Inputs[i].DimAxes)).ToArray();
            var results = program.Forward(device, parameters, inputs);
            return indices.Select(i => results[i].to_type(ScalarType.Float64).item<double>()).ToArray();
        });
        for (int d = 1; d < perDevice.Length; d++)
            for (int k = 0; k < indices.Length; k++)
                if (BitConverter.DoubleToInt64Bits(perDevice[d][k]) != BitConverter.DoubleToInt64Bits(perDevice[0][k]))
                    throw new InvalidOperationException(
                        $"devices disagree on output '{program.Outputs[indices[k]].Name}': device 0 has {perDevice[0][k]:R}, device {d} has {perDevice[d][k]:R}");
        return perDevice[0];
    }

    private static Tensor[] MakeInputs(IGraphProgram program, long seed)
    {
        var inputs = new Tensor[program.Inputs.Count];
        (Tensor tokens, Tensor targets)? batch = null;
        for (var i = 0; i < inputs.Length; i++)
        {
            var spec = program.Inputs[i];
            if (spec.Name is not ("tokens" or "targets") || spec.Shape.Length != 2 || !IsInteger(spec.DType))
            {
                throw new NotSupportedException(
                    $"Program '{program.Name}': cannot make input '{spec.Name}' ({spec.DType}[{string.Join(", ", spec.Shape)}]); "
                    + "only integer [batch, seq] inputs named 'tokens' and 'targets' are supported.");
            }
            batch ??= Batches.Random(seed, spec.Shape[0], spec.Shape[1], VocabSize(program));
            var t = spec.Name == "tokens" ? batch.Value.tokens : batch.Value.targets;
            inputs[i] = t.dtype == spec.DType ? t : t.to_type(spec.DType);
        }
        return inputs;
    }

    private static long VocabSize(IGraphProgram program)
    {
        foreach (var p in program.Parameters)
        {
            var d = Array.IndexOf(p.Dims, "vocab");
            if (d >= 0)
                return p.Shape[d];
        }
        throw new InvalidOperationException(
            $"Program '{program.Name}' has token inputs but no parameter with a dim named 'vocab' to size them from.");
    }

    private static bool IsInteger(ScalarType t) =>
        t is ScalarType.Int8 or ScalarType.Int16 or ScalarType.Int32 or ScalarType.Int64 or ScalarType.Byte;
}
