using PaLM.Dsl;

namespace PaLM.CodeGen.Tests;

/// <summary>Snapshot of the generated C#: an unintended change to code generation shows up as a diff.</summary>
public sealed class GoldenTests
{
    [Fact]
    public void PalmTinyGeneratedSourceMatchesTheSnapshot()
    {
        var actual = Emitter.Emit(Frontend.CompileFile(TestPaths.Graph("palm-tiny")), "palm-tiny.cs").Text;
        var path = Path.Combine(TestPaths.RepoRoot, "tests", "PaLM.CodeGen.Tests", "golden", "palm-tiny.cs.txt");
        if (Environment.GetEnvironmentVariable("PALMC_UPDATE_GOLDEN") == "1") File.WriteAllText(path, actual);
        var expected = File.ReadAllText(path);
        if (expected == actual) return;
        var (e, a) = (expected.Split('\n'), actual.Split('\n'));
        var i = Enumerable.Range(0, Math.Min(e.Length, a.Length)).FirstOrDefault(k => e[k] != a[k], Math.Min(e.Length, a.Length));
        Assert.Fail($"generated C# differs from {path} at line {i + 1} (PALMC_UPDATE_GOLDEN=1 rewrites it):\n" +
            $"- {(i < e.Length ? e[i] : "<end>")}\n+ {(i < a.Length ? a[i] : "<end>")}");
    }
}
