using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Spmd;

namespace PaLM.Benchmarks;

/// <summary>
/// The compiler's phases on PaLM 540B (<c>graphs/palm-540b.palm</c>) over its own mesh, pod=2, data=256, model=12:
/// parse and bind, sharding propagation, partitioning, the training step, C# emission. Each phase starts from the
/// previous phases' results, computed once in the setup.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(Config))]
public class CompilerPhaseBenchmarks
{
    private string _path = "";
    private Graph _graph = null!;
    private Mesh _mesh = null!;
    private Propagation _propagation = null!;
    private Graph _local = null!;

    /// <summary>Parses the file and runs every phase once, so each benchmark has its input.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _path = BenchSetup.GraphPath("palm-540b");
        _graph = Frontend.CompileFile(_path);
        _mesh = SpmdCompiler.ResolveMesh(_graph, null);
        _propagation = Propagation.Run(_graph, _mesh);
        _local = Partitioner.Run(_graph, _mesh, _propagation).Local;
    }

    /// <summary>The front end: read, parse, bind and verify the file and its include.</summary>
    [Benchmark]
    public Graph Parse() => Frontend.CompileFile(_path);

    /// <summary>Sharding propagation over the 6144-device mesh.</summary>
    [Benchmark]
    public Propagation Propagate() => Propagation.Run(_graph, _mesh);

    /// <summary>Partitioning into the per-device program, given the propagated shardings.</summary>
    [Benchmark]
    public Graph Partition() => Partitioner.Run(_graph, _mesh, _propagation).Local;

    /// <summary>The training step on the global graph (autodiff, loss, Adafactor), without the mesh.</summary>
    [Benchmark]
    public Graph TrainStepBuild() => TrainStep.Build(_graph).Graph;

    /// <summary>The whole training pipeline: training step, propagation, partitioning, parallel-layer fusion.</summary>
    [Benchmark]
    public Graph TrainingCompile() => TrainingCompiler.Compile(_graph, null, new TrainingConfig()).Local;

    /// <summary>C# emission (Roslyn syntax trees) of the per-device forward program.</summary>
    [Benchmark]
    public GeneratedSource Emit() => Emitter.Emit(_local);

    /// <summary>Phases take milliseconds to a second: a few warmups, ten iterations.</summary>
    public sealed class Config : ManualConfig
    {
        /// <summary>Two warmups and ten measured iterations, one launch, unroll factor 1.</summary>
        public Config() => Add(BenchSetup.JobConfig(BenchSetup.Measure("Phases", warmups: 2, iterations: 10)));
    }
}
