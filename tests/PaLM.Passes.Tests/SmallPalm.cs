using System.Globalization;
using PaLM.Dsl;
using PaLM.IR;

namespace PaLM.Passes.Tests;

/// <summary>PaLM's architecture (graphs/arch/palm.palm) at a test's size: two layers of two heads, one device.</summary>
internal static class SmallPalm
{
    /// <summary>The graph with <paramref name="seq"/> tokens a row and heads of <paramref name="headDim"/>.</summary>
    public static Graph Graph(string name, long seq, long headDim) => Frontend.CompileText(TestPaths.Graph(name), string.Create(CultureInfo.InvariantCulture,
        $"dim layers = 2, heads = 2, head_dim = {headDim}, d_model = {2 * headDim}, d_ff = 64\ndim vocab = 256, seq = {seq}, batch = 2\nmesh pod = 1, data = 1, model = 1\ninclude \"arch/palm.palm\"\n"));
}
