using PaLM.Dsl;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.CodeGen.Tests;

/// <summary>
/// The persistent compilation cache: the same program compiled twice is loaded the second time and computes the same
/// values; another program misses; a damaged entry is rebuilt; fast compilations are not stored.
/// </summary>
public sealed class ProgramCacheTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("palmc-programs-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static GeneratedSource Source(string op) => Emitter.Emit(Frontend.CompileText("cache.palm",
        $"dim b = 3, d = 5\nparam w: f32[b, d] = normal(1)\ninput x: f32[b, d]\ny = {op}(w * x)\noutput y\n"));

    private static float[] Run(IGraphProgram p)
    {
        using var scope = NewDisposeScope();
        var init = p.InitParameters(7);
        using var g = new Generator(3);
        var x = randn([3, 5], generator: g);
        return p.Forward(init, [x])[0].data<float>().ToArray();
    }

    [Fact]
    public void TheSameProgramIsLoadedFromTheCacheAndComputesTheSame()
    {
        Rt.Initialize();
        var cache = new ProgramCache(_dir, minCompileSeconds: 0);
        var first = RoslynCompiler.CompileInMemory(Source("exp"), cache, out var hit1);
        var second = RoslynCompiler.CompileInMemory(Source("exp"), cache, out var hit2);
        var other = RoslynCompiler.CompileInMemory(Source("tanh"), cache, out var hit3);
        Assert.False(hit1);
        Assert.True(hit2);
        Assert.False(hit3);
        Assert.Equal(Run(first), Run(second));
        Assert.NotEqual(Run(first), Run(other));
        Assert.Equal(2, Directory.GetFiles(_dir, "*.dll").Length);
    }

    [Fact]
    public void ADamagedEntryIsRebuiltAndFastCompilationsAreNotStored()
    {
        Rt.Initialize();
        var cache = new ProgramCache(_dir, minCompileSeconds: 0);
        var source = Source("exp");
        var expected = Run(RoslynCompiler.CompileInMemory(source, cache, out _));
        File.WriteAllBytes(Path.Combine(_dir, ProgramCache.Key(source, "library") + ".dll"), [1, 2, 3]);
        var again = RoslynCompiler.CompileInMemory(source, cache, out var hit);
        Assert.False(hit);
        Assert.Equal(expected, Run(again));
        Assert.True(RoslynCompiler.CompileInMemory(source, cache, out _) is not null);

        var slowOnly = new ProgramCache(Path.Combine(_dir, "slow"), minCompileSeconds: 1e6);
        RoslynCompiler.CompileInMemory(Source("tanh"), slowOnly, out _);
        Assert.False(Directory.Exists(slowOnly.Directory) && Directory.GetFiles(slowOnly.Directory).Length > 0);
    }

    /// <summary>The key is taken before layout (a hit never lays the program out) and is the same after it; programs that
    /// differ in one name or one literal get different keys; the fingerprint separates tokens, so two token sequences
    /// that print alike without whitespace (a keyword beside a name) cannot collide.</summary>
    [Fact]
    public void TheKeyIsTheProgramsTokensNotItsLayout()
    {
        var source = Source("exp");
        var before = ProgramCache.Key(source, "library");
        _ = source.Text;
        Assert.Equal(before, ProgramCache.Key(source, "library"));
        Assert.Equal(before, ProgramCache.Key(Source("exp"), "library"));
        Assert.NotEqual(before, ProgramCache.Key(Source("tanh"), "library"));
        Assert.NotEqual(before, ProgramCache.Key(source, "program"));
        var renamed = Emitter.Emit(Frontend.CompileText("cache.palm", "dim b = 3, d = 5\nparam w: f32[b, d] = normal(1)\ninput x: f32[b, d]\nz = exp(w * x)\noutput z\n"));
        Assert.NotEqual(before, ProgramCache.Key(renamed, "library"));
        var scaled = Emitter.Emit(Frontend.CompileText("cache.palm", "dim b = 3, d = 5\nparam w: f32[b, d] = normal(2)\ninput x: f32[b, d]\ny = exp(w * x)\noutput y\n"));
        Assert.NotEqual(before, ProgramCache.Key(scaled, "library"));
        Assert.Contains("var\u0001", source.Fingerprint);          // `var` and the name after it are two tokens
    }
}
