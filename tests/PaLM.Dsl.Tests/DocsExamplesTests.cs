using System.Text.RegularExpressions;
using PaLM.Dsl;

namespace PaLM.Dsl.Tests;

/// <summary>docs/dsl.md's complete examples compile, and each ```palm block is exactly its docs/examples file.</summary>
public sealed partial class DocsExamplesTests
{
    private static string Docs => Path.Combine(TestPaths.RepoRoot, "docs");

    public static TheoryData<string> Examples()
    {
        var data = new TheoryData<string>();
        foreach (var f in Directory.GetFiles(Path.Combine(Docs, "examples"), "*.palm").OrderBy(f => f, StringComparer.Ordinal))
            data.Add(Path.GetFileName(f));
        return data;
    }

    [Theory]
    [MemberData(nameof(Examples))]
    public void ExampleCompiles(string name)
    {
        var g = Frontend.CompileFile(Path.Combine(Docs, "examples", name));
        Assert.NotEmpty(g.OutputNames);
    }

    [Fact]
    public void EveryPalmBlockInTheDslReferenceIsAnExampleFile()
    {
        var md = File.ReadAllText(Path.Combine(Docs, "dsl.md")).Replace("\r\n", "\n");
        var blocks = PalmBlock().Matches(md).Select(m => m.Groups[1].Value).ToList();
        var files = Directory.GetFiles(Path.Combine(Docs, "examples"), "*.palm").Select(f => File.ReadAllText(f).Replace("\r\n", "\n")).ToList();
        Assert.NotEmpty(blocks);
        Assert.Equal(files.Count, blocks.Count);
        foreach (var b in blocks)
            Assert.Contains(files, f => f.TrimEnd() == b.TrimEnd());
    }

    [GeneratedRegex("```palm\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex PalmBlock();
}
