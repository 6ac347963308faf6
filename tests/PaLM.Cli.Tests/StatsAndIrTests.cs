using System.Text.Json;

namespace PaLM.Cli.Tests;

/// <summary><c>palmc stats --json</c> and <c>palmc ir</c>'s write/read round trips.</summary>
public sealed class StatsAndIrTests
{
    [Fact]
    public async Task Stats_Palm540b_Json()
    {
        var r = (await Proc.Palmc("stats", "graphs/palm-540b.palm", "--json")).Expect(0);

        using var doc = JsonDocument.Parse(r.Stdout);
        var root = doc.RootElement;
        foreach (var key in new[] { "parameters", "flops_per_token_palm", "forward_flops_per_token_ir" })
            Assert.True(root.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number, $"missing number '{key}':\n{r}");

        // PaLM 540B: 540.35B parameters (Chowdhery et al. 2022, table 1 and appendix B).
        var parameters = root.GetProperty("parameters").GetDouble();
        Assert.True(Math.Abs(parameters - 540.35e9) / 540.35e9 < 5e-4, $"parameters = {parameters:N0}, expected 540.35e9 within 0.05%");
        // 6N + attention: the PaLM formula exceeds 6N, and the IR's forward count is about a third of it.
        var palm = root.GetProperty("flops_per_token_palm").GetDouble();
        var forward = root.GetProperty("forward_flops_per_token_ir").GetDouble();
        Assert.True(palm > 6 * parameters, $"flops_per_token_palm = {palm:G6} should exceed 6N = {6 * parameters:G6}");
        Assert.InRange(forward / palm, 0.3, 0.37);
    }

    [Theory]
    [InlineData("x.pb", new string[0])]
    [InlineData("x.json", new[] { "--format", "json" })]
    public async Task Ir_WrittenAndReadBack_PrintsTheSameIr(string fileName, string[] formatArgs)
    {
        using var tmp = new TempDir();
        var path = tmp.File(fileName);

        var expected = (await Proc.Palmc("ir", "graphs/palm-tiny.palm")).Expect(0).Stdout;
        (await Proc.Palmc(["ir", "graphs/palm-tiny.palm", .. formatArgs, "-o", path])).Expect(0);
        Assert.True(new FileInfo(path).Length > 0, $"{path} is empty");
        var roundTripped = (await Proc.Palmc("ir", path)).Expect(0).Stdout;

        Assert.False(string.IsNullOrWhiteSpace(expected));
        Assert.Equal(expected, roundTripped);
    }
}
