using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.CodeGen.Tests;

/// <summary>
/// Products over a concatenation read piece by piece (<see cref="ProductsOverPieces"/>, <c>Rt.EinsumOverPieces</c>):
/// which joins qualify, and that programs compute the same with and without, on the two layouts parallel-layer fusion
/// makes in the backward pass (the join's dim leading the result, and trailing it) and on a batched product.
/// </summary>
public sealed class ProductsOverPiecesTests
{
    private static Graph Compile(long wide, long narrow) => Frontend.CompileText("pieces.palm", $"""
        dim b = 4, s = 8, c = 96, m = {wide}, a = {narrow}, f = {wide + narrow}
        input dy: f32[b, s, c]
        input mlp: f32[b, s, m]
        input attn: f32[b, s, a]
        input wd: f32[c, m]
        input wo: f32[c, a]
        saved = concat(mlp, attn, along=[m, a], as=f)
        dw = einsum(dy[b, s, c], saved[b, s, f] -> [f, c])
        weights = concat(wd, wo, along=[m, a], as=f)
        dx = einsum(dy[b, s, c], weights[c, f] -> [b, s, f])
        twice = concat(wd, wo, along=[m, a], as=f)
        first = einsum(dy[b, s, c], twice[c, f] -> [b, s, f])
        output dw
        output dx
        output first
        output twice
        """);

    private static string[] Planned(Graph g)
    {
        var plan = new ProductsOverPieces(g, new ConcatDestinations(g, LoopFusion.Plan(g)));
        return [.. g.Body.Nodes.Where(n => plan.Of(n) is not null).Select(n => n.Outputs[0].Name)];
    }

    [Fact]
    public void WidePiecesOfAJoinOnlyTheProductReadsAreReadInPlace()
    {
        // dw's and dx's joins are read by their products alone; `twice` is also an output, so it is made.
        Assert.Equal(["dw", "dx"], Planned(Compile(ProductsOverPieces.MinPiece, ProductsOverPieces.MinPiece + 8)));
        // A piece narrower than MinPiece keeps the join: a narrow product runs far below a wide one's speed.
        Assert.Empty(Planned(Compile(ProductsOverPieces.MinPiece, 64)));
        var text = Emitter.Emit(Compile(300, 260)).Text;
        Assert.Contains("Rt.EinsumOverPieces(\"abc,abd->dc\", 1L, 2L, dy, new Tensor[] { mlp, attn })", text);
        Assert.DoesNotContain("saved = Rt.Concat", text);
    }

    [Fact]
    public void AJoinOverAContractedDimIsMade()
    {
        var g = Frontend.CompileText("pieces.palm", """
            dim b = 4, c = 300, d = 280, j = 580, o = 3
            input x: f32[b, c]
            input y: f32[b, d]
            input w: f32[j, o]
            joined = concat(x, y, along=[c, d], as=j)
            p = einsum(joined[b, j], w[j, o] -> [b, o])
            output p
            """);
        Assert.Empty(Planned(g));
    }

    [Theory]
    [InlineData(300, 260)]
    [InlineData(512, 256)]
    public void ThePiecesGiveTheProductOfTheJoin(long wide, long narrow)
    {
        var g = Compile(wide, narrow);
        var pieces = RoslynCompiler.CompileInMemory(Emitter.Emit(g));
        var joined = RoslynCompiler.CompileInMemory(Emitter.Emit(g, options: new CodeGenOptions { ProductsOverPieces = false }));
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var gen = new Generator(7);
        var inputs = pieces.Inputs.Select(i => randn(i.Shape, generator: gen)).ToArray();
        var a = pieces.Forward([], inputs);
        var b = joined.Forward([], inputs);
        for (int i = 0; i < a.Length; i++)
            Assert.True(a[i].allclose(b[i], rtol: 1e-5, atol: 1e-5), $"output {pieces.Outputs[i].Name}: max difference {(a[i] - b[i]).abs().max().item<float>()}");
    }
}
