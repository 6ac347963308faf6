using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.CodeGen.Tests;

/// <summary>
/// Buffer donation: which elementwise ops compute into a dead operand's buffer, which must not, and that programs
/// emitted with and without it compute bit-identical results (in-place and out-of-place kernels are the same
/// arithmetic), on graphs where a wrong donation would overwrite a value still read later.
/// </summary>
public sealed class BufferReuseTests
{
    private const string Header = "dim b = 4, d = 8\n";

    private static Graph Compile(string body) => Frontend.CompileText("reuse.palm", Header + body);

    private static Dictionary<string, int> Plan(Graph g) =>
        BufferReuse.Plan(g).ToDictionary(kv => kv.Key.Outputs[0].Name, kv => kv.Value);

    [Fact]
    public void DeadTemporariesAreDonated()
    {
        var g = Compile("""
            input x: f32[b, d]
            input y: f32[b, d]
            t = x * y
            u = exp(t)
            v = y + u
            output v
            """);
        var plan = Plan(g);
        Assert.Equal(0, plan["u"]);          // t dies at exp
        Assert.Equal(1, plan["v"]);          // u dies at the add; add commutes, so its second operand is taken
        Assert.False(plan.ContainsKey("t")); // x and y are arguments: never overwritten
    }

    [Fact]
    public void LiveBroadcastAndReshapedOperandsAreNotDonated()
    {
        var g = Compile("""
            input x: f32[b, d]
            input s: f32[d]
            t = x * x
            u = exp(t)
            w = t - u
            r = exp(s)
            z = w * r
            q = r * x
            output z
            output q
            """);
        var plan = Plan(g);
        Assert.False(plan.ContainsKey("u"));  // t is read again by w
        Assert.Equal(0, plan["w"]);           // t's last use
        Assert.Equal(0, plan["z"]);           // w dies; r is [d], broadcast, and read again by q
        Assert.False(plan.ContainsKey("q"));  // r would have to grow to [b, d]; x is an argument
    }

    [Fact]
    public void NonCommutativeOpsDonateOnlyTheirFirstOperand()
    {
        var g = Compile("""
            input x: f32[b, d]
            t = exp(x)
            u = x - t
            output u
            """);
        Assert.False(Plan(g).ContainsKey("u"));
    }

    [Fact]
    public void PalmTinyTrainsIdenticallyWithAndWithoutReuse()
    {
        var graph = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var with = RoslynCompiler.CompileInMemory(Emitter.Emit(graph));
        var without = RoslynCompiler.CompileInMemory(Emitter.Emit(graph, options: new CodeGenOptions { ReuseBuffers = false }));
        Assert.True(BufferReuse.Plan(graph).Count > 0);
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var p = with.InitParameters(3);
        var (tokens, targets) = Batches.Random(4, 8, 16, 256);
        var a = with.Forward(p, [tokens, targets])[0].item<float>();
        var b = without.Forward(p, [tokens, targets])[0].item<float>();
        Assert.Equal(b, a);
        // Arguments are never written: a second run on the same parameters gives the same loss.
        Assert.Equal(a, with.Forward(p, [tokens, targets])[0].item<float>());
    }
}
