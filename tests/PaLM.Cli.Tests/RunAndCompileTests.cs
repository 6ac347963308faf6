using System.Globalization;
using System.Text.RegularExpressions;

namespace PaLM.Cli.Tests;

/// <summary>
/// <c>palmc run</c> (in memory, and against the eager reference), <c>palmc compile</c>'s program, and the library
/// example: all print the same loss on palm-tiny.
/// </summary>
public sealed class RunAndCompileTests
{
    private static readonly Regex s_loss = new(@"^(?<name>loss|reference loss) = (?<v>-?[0-9.]+(?:[eE][-+]?\d+)?)$", RegexOptions.Multiline);

    [Fact]
    public async Task Run_WithReference_MatchesTheEagerModel()
    {
        var r = (await Proc.Palmc("run", "graphs/palm-tiny.palm", "--reference")).Expect(0);

        var values = s_loss.Matches(r.Stdout).ToDictionary(m => m.Groups["name"].Value, m => double.Parse(m.Groups["v"].Value, CultureInfo.InvariantCulture));
        Assert.True(values.ContainsKey("loss") && values.ContainsKey("reference loss"), $"expected 'loss = ' and 'reference loss = ':\n{r}");
        var (v, v2) = (values["loss"], values["reference loss"]);
        Assert.True(double.IsFinite(v) && v > 0, $"loss = {v}");
        Assert.True(Math.Abs(v - v2) / Math.Abs(v2) < 1e-5, $"loss {v} vs reference {v2}");
        Assert.Equal(await Proc.TinyLoss, Proc.LossLine(r));
    }

    /// <summary>On a mesh the reference starts from the whole tensors the devices' pieces are cut from (Shards.InitWhole),
    /// without compiling the graph a second time unpartitioned.</summary>
    [Fact]
    public async Task Run_OnAMeshWithReference_MatchesTheEagerModel()
    {
        var r = (await Proc.Palmc("run", "graphs/palm-tiny.palm", "--mesh", "data=2,model=2", "--reference")).Expect(0);
        var values = s_loss.Matches(r.Stdout).ToDictionary(m => m.Groups["name"].Value, m => double.Parse(m.Groups["v"].Value, CultureInfo.InvariantCulture));
        Assert.True(values.ContainsKey("loss") && values.ContainsKey("reference loss"), $"expected 'loss = ' and 'reference loss = ':\n{r}");
        Assert.True(Math.Abs(values["loss"] - values["reference loss"]) / Math.Abs(values["reference loss"]) < 1e-5, $"loss {values["loss"]} vs reference {values["reference loss"]}");
    }

    [Fact]
    public async Task Compile_ProgramPrintsTheSameLoss_FromAnyWorkingDirectory()
    {
        // Beside palmc.dll, so libtorch's ~1 GB of native libraries are hard-linked (same file system), not copied.
        using var dir = new TempDir(AppContext.BaseDirectory);
        using var elsewhere = new TempDir();

        var c = (await Proc.Palmc("compile", "graphs/palm-tiny.palm", "-o", dir.Path)).Expect(0);
        Assert.True(File.Exists(dir.File("palm-tiny.cs")), $"no palm-tiny.cs:\n{c}");
        Assert.True(File.Exists(dir.File("palm-tiny.dll")), $"no palm-tiny.dll:\n{c}");
        Assert.Contains("class PalmTiny", File.ReadAllText(dir.File("palm-tiny.cs")));

        var expected = await Proc.TinyLoss;
        var fromRoot = (await Proc.Dotnet(dir.File("palm-tiny.dll"), [])).Expect(0);
        Assert.Equal(expected, Proc.LossLine(fromRoot));
        var fromElsewhere = (await Proc.Dotnet(dir.File("palm-tiny.dll"), [], cwd: elsewhere.Path)).Expect(0);
        Assert.Equal(expected, Proc.LossLine(fromElsewhere));
    }

    [Fact]
    public async Task Example_CompileAndRun_PrintsTheSameLoss()
    {
        var dll = Repo.ExampleDll;
        Assert.True(File.Exists(dll), $"{dll} not built (tests/PaLM.Cli.Tests references examples/CompileAndRun to build it)");

        var r = (await Proc.Dotnet(dll, [])).Expect(0);

        Assert.Equal(await Proc.TinyLoss, Proc.LossLine(r));
        Assert.Matches(@"^palm-tiny: parameters = [0-9,]+$", r.Lines[0]);
    }

    [Fact]
    public async Task Example_CompileAndRun_FindsTheRepositoryFromItsOwnFolder()
    {
        using var elsewhere = new TempDir();

        var r = (await Proc.Dotnet(Repo.ExampleDll, [], cwd: elsewhere.Path)).Expect(0);

        Assert.Equal(await Proc.TinyLoss, Proc.LossLine(r));
    }
}
