using PaLM.CodeGen;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Reference;
using PaLM.Runtime;
using PaLM.Runtime.Training;
using static TorchSharp.torch;

namespace PaLM.Perf;

/// <summary>
/// One training step at a time on one device, generated or eager, for harnesses that drive steps themselves
/// (BenchmarkDotNet): both sides start from the program's initial weights and take the same batches.
/// </summary>
public sealed class SingleDeviceStep : IDisposable
{
    private readonly IGraphProgram _program;
    private readonly Tensor[] _persistent;
    private readonly EagerTrainer _eager;
    private readonly ByteCorpus _corpus;
    private readonly long _batch, _seq;
    private readonly int _tokens, _targets, _stepInput;
    private long _generatedStep, _eagerStep;

    /// <summary>Compiles <paramref name="graph"/>'s training step for one device (no remat, fused) and sets up both sides.</summary>
    public SingleDeviceStep(Graph graph, TrainingConfig? config = null, long seed = 0)
    {
        Rt.Initialize();
        // Every declared mesh axis at size 1: one device whatever the graph's own mesh.
        var one = graph.Mesh is { } m ? new Mesh([.. m.Axes.Select(a => a with { Size = 1 })]) : null;
        var compiled = TrainingCompiler.Compile(graph, one, config ?? new TrainingConfig());
        if (compiled.Spmd.Mesh.DeviceCount != 1) throw new ArgumentException("a single-device step needs a one-device mesh", nameof(graph));
        _program = RoslynCompiler.CompileInMemory(Emitter.Emit(compiled.Local, options: new CodeGenOptions { DonateUpdatedArguments = true }));
        _persistent = _program.InitParameters(seed);
        foreach (var t in _persistent) t.MoveToOuterDisposeScope();
        _eager = StepBench.CreateEager(_program, _persistent);
        _corpus = ByteCorpus.Default();
        _tokens = Index("tokens");
        _targets = Index("targets");
        _stepInput = Index("step");
        (_batch, _seq) = (_program.Inputs[_tokens].Shape[0], _program.Inputs[_tokens].Shape[1]);
    }

    private int Index(string name)
    {
        for (int i = 0; i < _program.Inputs.Count; i++) if (_program.Inputs[i].Name == name) return i;
        throw new InvalidOperationException($"program '{_program.Name}' has no input '{name}'");
    }

    /// <summary>One step of the generated program; returns its loss.</summary>
    public double Generated()
    {
        var step = ++_generatedStep;
        using var scope = NewDisposeScope();
        var (tokens, targets) = _corpus.Batch(1, step, _batch, _seq);
        var inputs = new Tensor[_program.Inputs.Count];
        inputs[_tokens] = tokens;
        inputs[_targets] = targets;
        inputs[_stepInput] = tensor((float)step, ScalarType.Float32);
        var outs = _program.Forward(_persistent, inputs);
        double loss = double.NaN;
        for (int i = 0; i < outs.Length; i++)
        {
            var spec = _program.Outputs[i];
            if (spec.Updates >= 0)
            {
                if (!ReferenceEquals(_persistent[spec.Updates], outs[i])) _persistent[spec.Updates].Dispose();   // donated: updated in place
                _persistent[spec.Updates] = outs[i].MoveToOuterDisposeScope();
            }
            else if (spec.Name == "loss") loss = outs[i].item<float>();
        }
        return loss;
    }

    /// <summary>One step of the eager TorchSharp peer; returns its loss.</summary>
    public double Eager()
    {
        var step = ++_eagerStep;
        using var scope = NewDisposeScope();
        var (tokens, targets) = _corpus.Batch(1, step, _batch, _seq);
        return _eager.Step(tokens, targets, step).Loss;
    }

    /// <summary>
    /// Runs generated and eager steps, alternating, until .NET stops compiling methods (<see cref="JitSettling"/>: none
    /// compiled over two pairs of steps and at least a second), for at most <paramref name="max"/>; returns the pairs
    /// run. As `palmc bench --warmup auto` does: the generated step's methods are large and tier up late (palm-tiny:
    /// 200-450 steps), and a harness with a few fixed warm-up iterations would time them unoptimized (13.7 ms against
    /// 3.1-4.4 settled).
    /// </summary>
    public int SettleJit(TimeSpan max)
    {
        var total = System.Diagnostics.Stopwatch.StartNew();
        var jit = new JitSettling();
        int pairs = 0;
        while (total.Elapsed < max)
        {
            Generated();
            Eager();
            pairs++;
            if (jit.AfterStep()) break;
        }
        return pairs;
    }

    public void Dispose()
    {
        foreach (var t in _persistent) t.Dispose();
        _eager.Dispose();
    }
}
