using PaLM.Dsl;

namespace PaLM.CodeGen.Tests;

/// <summary>Snapshot of the generated C#: an unintended change to code generation shows up as a diff.</summary>
public sealed class GoldenTests
{
    [Fact]
    public void PalmTinyGeneratedSourceMatchesTheSnapshot()
    {
        var actual = Emitter.Emit(Frontend.CompileFile(TestPaths.Graph("palm-tiny")), "palm-tiny.cs").Text;
        Golden.Check("tests/PaLM.CodeGen.Tests/golden/palm-tiny.cs.txt", actual, "generated C#");
    }
}
