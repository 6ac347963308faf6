using System.Text.RegularExpressions;

namespace PaLM.Cli.Tests;

/// <summary><c>palmc check</c>: ok on a good graph; every error as FILE:LINE:COL, never a stack trace, on a bad one.</summary>
public sealed class CheckTests
{
    private static readonly Regex s_errorLine = new(@"^(?<file>.+):(?<line>\d+):(?<col>\d+): error: (?<msg>.+)$", RegexOptions.Multiline);

    [Fact]
    public async Task Check_TinyGraph_ExitsZero()
    {
        var r = (await Proc.Palmc("check", "graphs/palm-tiny.palm")).Expect(0);
        Assert.Contains("graphs/palm-tiny.palm: ok", r.Stdout);
        Assert.Equal("", r.Stderr);
    }

    /// <summary>Three independent binding errors, one per line: all three are reported, in source order.</summary>
    [Fact]
    public async Task Check_BrokenFile_ReportsEveryErrorCleanly()
    {
        using var tmp = new TempDir();
        var path = tmp.File("broken.palm");
        File.WriteAllText(path, """
            dim batch = 2, seq = 4, d = 8, e = 8
            input x: f32[batch, seq, d]
            param w: f32[d, e] = normal(1)
            a = einsum(x[batch, seq, d], w[d, q] -> [batch, seq, e])
            b = frobnicate(x)
            c = x + undefined_name
            output c

            """);

        var r = (await Proc.Palmc("check", path)).Expect(1);

        var errors = s_errorLine.Matches(r.Stderr);
        Assert.True(errors.Count == 3, $"expected 3 errors:\n{r}");
        Assert.All(errors, m => Assert.Equal(path, m.Groups["file"].Value));
        Assert.Equal(new[] { (4, 35), (5, 5), (6, 9) },
            errors.Select(m => (int.Parse(m.Groups["line"].Value), int.Parse(m.Groups["col"].Value))));
        Assert.Contains("'q'", errors[0].Groups["msg"].Value);
        Assert.Contains("'frobnicate'", errors[1].Groups["msg"].Value);
        Assert.Contains("'undefined_name'", errors[2].Groups["msg"].Value);
        Assert.Contains("3 errors", r.Stderr);
        AssertNoStackTrace(r);
        Assert.Equal("", r.Stdout);
    }

    /// <summary>
    /// Binding errors before a file's first syntax error are kept (Frontend's rule), so this file has three reportable
    /// errors. (A lazy filter over the list being appended to once dropped all but the first.)
    /// </summary>
    [Fact]
    public async Task Check_BindingErrorsBeforeASyntaxError_AreAllReported()
    {
        using var tmp = new TempDir();
        var path = tmp.File("mixed.palm");
        File.WriteAllText(path, """
            dim batch = 2, seq = 4, d = 8, e = 8
            input x: f32[batch, seq, d]
            param w: f32[d, e] = normal(1)
            a = einsum(x[batch, seq, d], w[d, q] -> [batch, seq, e])
            b = frobnicate(x)
            c = x + * 2
            output c

            """);

        var r = (await Proc.Palmc("check", path)).Expect(1);

        Assert.Equal(new[] { 4, 5, 6 }, s_errorLine.Matches(r.Stderr).Select(m => int.Parse(m.Groups["line"].Value)));
        AssertNoStackTrace(r);
    }

    [Fact]
    public async Task Check_MissingFile_ExitsOneWithOneCleanLine()
    {
        using var tmp = new TempDir();
        var path = tmp.File("no-such-graph.palm");

        var r = (await Proc.Palmc("check", path)).Expect(1);

        Assert.Equal($"{path}: error: no such file", r.Stderr.Trim());
        Assert.Equal("", r.Stdout);
        AssertNoStackTrace(r);
    }

    private static void AssertNoStackTrace(ProcResult r)
    {
        Assert.DoesNotContain("   at ", r.Stderr);
        Assert.DoesNotContain("Exception", r.Stderr);
        Assert.DoesNotContain("internal error", r.Stderr);
    }
}
