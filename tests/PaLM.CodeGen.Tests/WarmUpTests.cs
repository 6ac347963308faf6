using PaLM.Dsl;
using PaLM.Runtime;

namespace PaLM.CodeGen.Tests;

/// <summary>
/// <see cref="RoslynCompiler.WarmUp"/>: its program compiles against the references and options real programs get (a
/// warm-up that failed to bind would warm little of Roslyn, and nothing would say so), and a compile after it, from the
/// cache or not, gives a working program and leaves no warm-up running (one left running on a loaded machine went on
/// allocating through a benchmark's timed steps).
/// </summary>
public sealed class WarmUpTests
{
    [Fact]
    public void TheWarmUpProgramCompiles()
    {
        var result = RoslynCompiler.CompileWarmUp(CancellationToken.None);
        Assert.True(result.Success, string.Join("\n", result.Diagnostics));
    }

    [Fact]
    public void ACancelledWarmUpStops()
    {
        using var cancel = new CancellationTokenSource();
        cancel.Cancel();
        Assert.Throws<OperationCanceledException>(() => RoslynCompiler.CompileWarmUp(cancel.Token));
    }

    [Fact]
    public void CompilesAfterAWarmUpFromTheCacheAndWithout()
    {
        Rt.Initialize();
        var dir = Directory.CreateTempSubdirectory("palmc-warmup-").FullName;
        try
        {
            var cache = new ProgramCache(dir, minCompileSeconds: 0);
            var source = Emitter.Emit(Frontend.CompileText("warm.palm", "dim d = 4\nparam w: f32[d] = normal(1)\ninput x: f32[d]\ny = w * x\noutput y\n"));
            RoslynCompiler.WarmUp();
            var built = RoslynCompiler.CompileInMemory(source, cache, out var hit1);
            Assert.False(RoslynCompiler.WarmUpRunning);     // stopped before the program is handed back
            RoslynCompiler.WarmUp();                 // once per process: a second call starts nothing
            var loaded = RoslynCompiler.CompileInMemory(source, cache, out var hit2);
            Assert.False(RoslynCompiler.WarmUpRunning);
            Assert.False(hit1);
            Assert.True(hit2);
            Assert.Equal(built.Outputs.Count, loaded.Outputs.Count);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
