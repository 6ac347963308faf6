using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using PaLM.Dsl;
using PaLM.Perf;

namespace PaLM.Benchmarks;

/// <summary>
/// One training step (forward, backward, Adafactor update) on one device: the compiled program against the
/// hand-written eager TorchSharp peer, from the same weights on the same batches. Managed allocations only: the
/// tensors' native memory is invisible to the memory diagnoser.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(Config))]
public class TrainingStepBenchmarks
{
    private SingleDeviceStep? _step;

    /// <summary>The graph under <c>graphs/</c>.</summary>
    [ParamsSource(nameof(Models))]
    public string Model { get; set; } = "palm-tiny";

    /// <summary>palm-tiny (milliseconds a step) and palm-cpu (seconds a step); smoke mode: palm-tiny only.</summary>
    public static IEnumerable<string> Models => BenchSetup.Smoke ? ["palm-tiny"] : ["palm-tiny", "palm-cpu"];

    /// <summary>Compiles the graph's training step and sets up the eager peer from the same weights, then steps both until
    /// the JIT settles (at most 30 s; not in smoke mode), so the iterations time optimized code, as `palmc bench` does.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _step = new SingleDeviceStep(Frontend.CompileFile(BenchSetup.GraphPath(Model)));
        if (!BenchSetup.Smoke)
        {
            int pairs = _step.SettleJit(TimeSpan.FromSeconds(30));
            Console.WriteLine($"// {Model}: {pairs} generated and eager steps before measuring, until no method was compiled for two of them");
        }
    }

    /// <summary>Frees the weights and optimizer state.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _step?.Dispose();
        _step = null;
    }

    /// <summary>One step of the eager TorchSharp model; returns the loss.</summary>
    [Benchmark(Baseline = true)]
    public double Eager() => _step!.Eager();

    /// <summary>One step of the generated program; returns the loss.</summary>
    [Benchmark]
    public double Generated() => _step!.Generated();

    /// <summary>
    /// A palm-cpu step takes seconds, so few fixed iterations; the invocation count is left to the pilot stage, which
    /// settles on one call per iteration for palm-cpu and on enough calls for half a second for palm-tiny.
    /// </summary>
    public sealed class Config : ManualConfig
    {
        /// <summary>Two warmups and ten measured iterations, one launch, unroll factor 1.</summary>
        public Config() => Add(BenchSetup.JobConfig(BenchSetup.Measure("Step", warmups: 2, iterations: 10)));
    }
}
