using System.Text;
using PaLM.Dsl;

namespace PaLM.IR.Tests;

/// <summary>
/// The canonical text of palm-tiny is pinned in golden/palm-tiny.ir.txt (in the repository, not the output folder).
/// Set PALMC_UPDATE_GOLDEN=1 to rewrite it after an intended change, then review the diff.
/// </summary>
public class GoldenTests
{
    private static string GoldenPath => Path.Combine(TestPaths.RepoRoot, "tests", "PaLM.IR.Tests", "golden", "palm-tiny.ir.txt");

    [Fact]
    public void Palm_tiny_prints_as_the_golden_text()
    {
        var actual = Printer.Print(Frontend.CompileFile(TestPaths.Graph("palm-tiny")));
        if (Environment.GetEnvironmentVariable("PALMC_UPDATE_GOLDEN") == "1")
        {
            AtomicFile.WriteAllText(GoldenPath, actual);
            return;
        }
        var expected = File.ReadAllText(GoldenPath).Replace("\r\n", "\n");
        if (expected != actual)
            Assert.Fail($"IR text differs from {GoldenPath} (set PALMC_UPDATE_GOLDEN=1 to accept the new text):\n{Diff(expected, actual)}");
    }

    [Fact]
    public void The_diff_shows_the_first_differing_lines()
    {
        var d = Diff("a\nb\nc\nd\n", "a\nb\nX\nd\n");
        Assert.Contains("@@ line 3 @@", d);
        Assert.Contains("-c", d);
        Assert.Contains("+X", d);
        Assert.Contains(" b", d);
        Assert.DoesNotContain("-a", d);
    }

    [Fact]
    public void Printing_is_deterministic()
    {
        foreach (var name in new[] { "palm-tiny", "palm-540b" })
        {
            var a = Printer.Print(Frontend.CompileFile(TestPaths.Graph(name)));
            var b = Printer.Print(Frontend.CompileFile(TestPaths.Graph(name)));
            Assert.Equal(a, b);
            Assert.Equal(a, Frontend.CompileFile(TestPaths.Graph(name)).ToString());
        }
    }

    [Fact]
    public void Printing_does_not_depend_on_the_working_directory_or_path_spelling()
    {
        var viaAbsolute = Printer.Print(Frontend.CompileFile(TestPaths.Graph("palm-tiny")));
        var text = File.ReadAllText(TestPaths.Graph("palm-tiny"));
        var arch = File.ReadAllText(Path.Combine(TestPaths.Graphs, "arch", "palm.palm"));
        var inMemory = Printer.Print(Frontend.CompileText("elsewhere/palm-tiny.palm", text,
            new Dictionary<string, string> { ["elsewhere/arch/palm.palm"] = arch }));
        Assert.Equal(viaAbsolute, inMemory);
    }

    /// <summary>A unified-style excerpt around the first differing line: two lines of context, then up to six lines each side.</summary>
    internal static string Diff(string expected, string actual)
    {
        var e = expected.Split('\n');
        var a = actual.Split('\n');
        int i = 0;
        while (i < e.Length && i < a.Length && e[i] == a[i]) i++;
        var sb = new StringBuilder();
        sb.Append("--- expected (golden)\n+++ actual\n");
        sb.Append($"@@ line {i + 1} @@ (expected {e.Length} lines, actual {a.Length})\n");
        for (int k = Math.Max(0, i - 2); k < i; k++) sb.Append(' ').Append(e[k]).Append('\n');
        for (int k = i; k < Math.Min(e.Length, i + 6); k++) sb.Append('-').Append(e[k]).Append('\n');
        for (int k = i; k < Math.Min(a.Length, i + 6); k++) sb.Append('+').Append(a[k]).Append('\n');
        return sb.ToString();
    }
}
