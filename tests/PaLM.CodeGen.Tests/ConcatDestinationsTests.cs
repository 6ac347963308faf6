using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.CodeGen.Tests;

/// <summary>
/// Fused loops writing into the concatenation that reads them (<see cref="ConcatDestinations"/>): which results do, and
/// that the program computes the same bits with and without, whether the loop walks its slice in place (rows of at
/// least <see cref="FusedLoop.MinRowElements"/>) or computes elsewhere and copies in.
/// </summary>
public sealed class ConcatDestinationsTests
{
    private static Graph Compile(int width) => Frontend.CompileText("join.palm", $"""
        dim b = 4, d = {width}, e = 64, j = {width + 64}, dd = {2 * width}, o = 3
        input x: f32[b, d]
        input y: f32[b, d]
        input z: f32[b, e]
        input w: f32[j, o]
        a = x * y
        g = exp(a)
        h = g + x
        joined = concat(h, z, along=[d, e], as=j)
        p = einsum(joined[b, j], w[j, o] -> [b, o])
        s = sigmoid(y)
        t = s * y
        kept = concat(t, t, along=[d, d], as=dd)
        output p
        output kept
        output s
        """);

    [Fact]
    public void ALoopResultOnlyAJoinReadsIsWrittenIntoIt()
    {
        var g = Compile(1024);
        var destinations = new ConcatDestinations(g, LoopFusion.Plan(g));
        var h = g.Body.Nodes.Single(n => n.Outputs[0].Name == "h").Outputs[0];
        Assert.Equal(0, destinations.Of(h)?.Offset);
        Assert.Equal(1024, destinations.Of(h)?.Length);
        // t is read twice by its join, and s is an output of its own: both keep their own buffers.
        var t = g.Body.Nodes.Single(n => n.Outputs[0].Name == "t").Outputs[0];
        Assert.Null(destinations.Of(t));
        var text = Emitter.Emit(g).Text;
        Assert.Contains("Rt.ConcatInto(joined_join", text);
        // A piece that is also one of the graph's outputs keeps a buffer of its own: callers get dense tensors.
        var shown = Frontend.CompileText("join.palm", """
            dim b = 4, d = 1024, e = 64, j = 1088, o = 3
            input x: f32[b, d]
            input y: f32[b, d]
            input z: f32[b, e]
            input w: f32[j, o]
            h = exp(x * y)
            joined = concat(h, z, along=[d, e], as=j)
            p = einsum(joined[b, j], w[j, o] -> [b, o])
            output p
            output h
            """);
        var hShown = shown.Body.Nodes.Single(n => n.Outputs[0].Name == "h").Outputs[0];
        Assert.Null(new ConcatDestinations(shown, LoopFusion.Plan(shown)).Of(hShown));
        Assert.DoesNotContain("Rt.ConcatInto(joined_join", Emitter.Emit(g, options: new CodeGenOptions { ConcatInPlace = false }).Text);
    }

    [Theory]
    [InlineData(1024, 1)]    // rows of 1024: the loop writes its slice in place
    [InlineData(40, 2)]      // rows too short to walk: computed into a new buffer, then copied in
    public void JoinsHoldTheSameBitsWithAndWithout(int width, int seed)
    {
        var g = Compile(width);
        var into = RoslynCompiler.CompileInMemory(Emitter.Emit(g));
        var copied = RoslynCompiler.CompileInMemory(Emitter.Emit(g, options: new CodeGenOptions { ConcatInPlace = false }));
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var gen = new TorchSharp.torch.Generator((ulong)seed);
        var inputs = into.Inputs.Select(i => randn(i.Shape, generator: gen)).ToArray();
        var a = into.Forward([], inputs);
        var b = copied.Forward([], inputs);
        for (int i = 0; i < a.Length; i++)
            Assert.True(a[i].eq(b[i]).all().item<bool>(), $"output {into.Outputs[i].Name} differs");
    }
}
