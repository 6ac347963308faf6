using System.Text;
using PaLM.Dsl;

namespace PaLM.IR.Tests;

/// <summary>
/// The canonical text of palm-tiny is pinned in golden/palm-tiny.ir.txt (in the repository, not the output folder).
/// Set PALMC_UPDATE_GOLDEN=1 to rewrite it after an intended change, then review the diff.
/// </summary>
public class GoldenTests
{
    private const string GoldenPath = "tests/PaLM.IR.Tests/golden/palm-tiny.ir.txt";

    [Fact]
    public void Palm_tiny_prints_as_the_golden_text()
    {
        Golden.Check(GoldenPath, Printer.Print(Frontend.CompileFile(TestPaths.Graph("palm-tiny"))), "IR text");
    }

    [Fact]
    public void The_diff_shows_the_first_differing_lines()
    {
        var d = Golden.Diff("a\nb\nc\nd\n", "a\nb\nX\nd\n");
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
}
