using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.Passes;
using PaLM.Runtime.Training;

namespace PaLM.Perf.Tests;

/// <summary>
/// No leaks: 500 training steps of palm-tiny keep the native heap's bytes in use flat after warm-up (within 5%).
/// Every step allocates its activations, gradients and new parameters afresh; a tensor that escaped its dispose scope
/// (TorchSharp tensors are native memory the GC does not see) would add its bytes every step: 500 steps of one leaked
/// activation of palm-tiny's smallest (8·16·64 floats, 32 KiB) alone would be 16 MB, far over the 5% allowed.
/// In-use bytes, not resident memory, because this process also ran other tests whose freed blocks and managed heap
/// sit in its resident memory; the CLI tests check resident memory itself in a fresh palmc process (BenchTests).
/// </summary>
[Collection(Serial.Name)]
public sealed class LeakTests
{
    [Fact]
    public void ResidentMemoryStaysFlatOver500Steps()
    {
        var graph = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var compiled = TrainingCompiler.Compile(graph, null, new TrainingConfig());
        var program = RoslynCompiler.CompileInMemory(Emitter.Emit(compiled.Local));
        var resident = new List<long>();
        Trainer.Run(program, new TrainerOptions
        {
            Steps = 500, Corpus = ByteCorpus.Default(),
            BetweenSteps = _ => resident.Add(ResidentMemory.NativeInUse()),
        });
        Assert.Equal(500, resident.Count);
        const int warmup = 50;
        var baseline = resident[warmup - 1];
        var max = resident.Skip(warmup).Max();
        Assert.True(baseline > 0, "no reading of the native heap");
        Assert.True(max <= baseline * 1.05,
            $"native memory in use grew from {baseline / 1e6:F1} MB after {warmup} steps to {max / 1e6:F1} MB (last {resident[^1] / 1e6:F1} MB)");
    }
}

/// <summary>Tests that read process-wide figures (resident memory) run alone: other tests' allocations would show in them.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class Serial
{
    public const string Name = "serial";
}
