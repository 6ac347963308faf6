namespace PaLM.Dsl.Tests;

/// <summary>Resizing declared dims at compile time (<c>palmc simulate --batch</c>).</summary>
public sealed class DimOverrideTests
{
    private const string Text = """
        dim batch = 8, seq = 4, d = 16
        dim tokens_per_step = batch * seq
        input x: f32[batch, seq, d]
        y = x * 2
        output y
        """;

    private static string Write()
    {
        var path = Path.Combine(Path.GetTempPath(), $"palmc-dims-{Guid.NewGuid():N}.palm");
        File.WriteAllText(path, Text);
        return path;
    }

    [Fact]
    public void AnOverriddenDimAndTheDimsDefinedFromItChange()
    {
        var path = Write();
        try
        {
            var g = Frontend.CompileFile(path, new Dictionary<string, long> { ["batch"] = 64 });
            Assert.Equal(64, g.DimsByName["batch"].Size);
            Assert.Equal(256, g.DimsByName["tokens_per_step"].Size);
            Assert.Equal(8, Frontend.CompileFile(path).DimsByName["batch"].Size);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void UnknownOrNonPositiveOverridesAreErrors()
    {
        var path = Write();
        try
        {
            var e = Assert.Throws<DslException>(() => Frontend.CompileFile(path, new Dictionary<string, long> { ["bacth"] = 4 }));
            Assert.Contains("dim override 'bacth': the graph declares no such dim", e.FormatAll());
            Assert.Contains("batch", e.FormatAll());
            var z = Assert.Throws<DslException>(() => Frontend.CompileFile(path, new Dictionary<string, long> { ["batch"] = 0 }));
            Assert.Contains("must be positive", z.FormatAll());
        }
        finally { File.Delete(path); }
    }
}
