using PaLM.Dsl;
using PaLM.IR;

namespace PaLM.Dsl.Tests;

public sealed class NumberOperandTests
{
    private const string Header = "dim b = 2, d = 4\ninput e: bf16[b, d]\n";

    [Theory]
    [InlineData("y = maximum(0, e)")]
    [InlineData("y = maximum(e, 0)")]
    [InlineData("y = 0 - e")]
    public void ANumberTakesTheDtypeOfTheTensorOperandWhereverItStands(string line)
    {
        var g = Frontend.CompileText("n.palm", Header + line + "\noutput y\n");
        Assert.Equal(DType.BF16, g.Body.Results[0].Type.DType);
    }

    [Fact]
    public void InvisibleFormatCharactersAreNotPartOfNames()
    {
        // "e\u200B" would look exactly like "e"; the language refuses it rather than making two names that look alike.
        var ex = Assert.Throws<DslException>(() => Frontend.CompileText("z.palm", Header + "y = e\u200B * 2\noutput y\n"));
        Assert.Equal(3, ex.Diagnostics[0].Loc.Line);
    }
}
