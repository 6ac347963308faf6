using System.Globalization;
using System.Reflection;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.CodeGen.Tests;

/// <summary>
/// Loop fusion: which elementwise ops share a generated loop, that the loop runs where nothing is read before it is
/// written, and that fused programs compute what the unfused ones do (to float rounding) over random chains, shapes that
/// do and do not divide into chunks, and every fusible op.
/// </summary>
public sealed class LoopFusionTests
{
    private static Graph Compile(string text) => Frontend.CompileText("fusion.palm", text);

    private static List<List<string>> Groups(Graph g) =>
        [.. LoopFusion.Plan(g).Groups.Select(x => x.Members.Select(m => m.Outputs[0].Name).ToList())];

    [Fact]
    public void AChainFusesAndClosesWhereSomethingElseReadsIt()
    {
        var g = Compile("""
            dim b = 4, d = 8, e = 3
            input x: f32[b, d]
            input y: f32[b, d]
            input w: f32[d, e]
            t = x * y
            u = exp(t)
            p = einsum(u[b, d], w[d, e] -> [b, e])
            v = u + x
            output v
            output p
            """);
        // t and u fuse; the einsum reads u, so v (an elementwise op after it) starts a group of its own (one op: unfused).
        Assert.Equal([["t", "u"]], Groups(g));
        var group = LoopFusion.Plan(g).Groups[0];
        Assert.Equal(["u"], group.Outputs.Select(v => v.Name));   // t lives only in a scratch chunk
        Assert.Equal(["x", "y"], group.Inputs.Select(v => v.Name));
    }

    [Fact]
    public void SiblingsReadingOneOperandShareALoopWithTwoResults()
    {
        var g = Compile("""
            dim b = 4, d = 8, e = 3
            input dy: f32[b, d]
            input up: f32[b, d]
            input act: f32[b, d]
            input w: f32[d, e]
            d_up = dy * act
            d_act = dy * up
            d_gate = exp(d_act)
            p = einsum(d_gate[b, d], w[d, e] -> [b, e])
            late = dy * up
            output d_up
            output p
            output late
            """);
        // d_act reads none of d_up's group's results but shares dy with it: one loop, results d_up and d_gate. The
        // einsum closes that group, so the later product of the same operands is on its own (one op: unfused).
        Assert.Equal([["d_up", "d_act", "d_gate"]], Groups(g));
        var group = LoopFusion.Plan(g).Groups[0];
        Assert.Equal(["d_up", "d_gate"], group.Outputs.Select(v => v.Name));
        Assert.Equal(["dy", "act", "up"], group.Inputs.Select(v => v.Name));
        AssertSameResults(g, 5);
    }

    [Fact]
    public void BroadcastsOtherDtypesAndScalarsStayOutside()
    {
        var g = Compile("""
            dim b = 4, d = 8
            input x: f32[b, d]
            input r: f32[d]
            input s: f32[]
            input h: bf16[b, d]
            t = x * s
            u = t * r
            k = h * h
            q = exp(k)
            z = s * s
            output u
            output q
            output z
            """);
        // t * r broadcasts r, bf16 is not fused, and a scalar op has no loop: nothing has a partner.
        Assert.Empty(Groups(g));
    }

    [Fact]
    public void OperandsOverTheLeadingDimsJoinTheLoop()
    {
        // Adafactor's shape: a stacked weight's update divided and scaled by per-layer factors ([l], and [l, d] here),
        // which join the loop as lead operands; a factor over the trailing dims ([e]) is a broadcast the loop does not take.
        var g = Compile($"""
            dim l = 3, d = 4, e = {FusedLoop.ChunkElements / 3 + 7}
            input u: f32[l, d, e]
            input m: f32[l, d, e]
            input den: f32[l]
            input step: f32[l, d]
            input col: f32[e]
            clipped = u / den
            m_new = m * 0.9 + clipped * 0.1
            update = m_new * step
            w_new = m - update
            t = w_new * col
            output m_new
            output w_new
            output t
            """);
        var group = Assert.Single(LoopFusion.Plan(g).Groups);
        var names = group.Members.Select(n => n.Outputs[0].Name).ToHashSet();
        Assert.Subset(names, new HashSet<string> { "clipped", "m_new", "update", "w_new" });
        Assert.DoesNotContain("t", names);
        Assert.Equal(["den", "step"], group.Leads.Select(v => v.Name));
        Assert.Equal(["u", "m"], group.Inputs.Select(v => v.Name));
        AssertSameResults(g, seed: 3);
    }

    [Fact]
    public void ALeadsOwnLoopRunsBeforeTheLoopThatReadsIt()
    {
        // f (a per-layer factor) is made by an open [l] group that g would join later; t reads f as a lead, so f's
        // group must close there, or its loop would move past t and t would read f before it exists.
        var g = Compile("""
            dim l = 3, d = 4, e = 5
            input u: f32[l, d, e]
            input r: f32[l]
            input s: f32[l]
            f = exp(r)
            t = u * f
            h = t + u
            q = f + s
            output h
            output q
            """);
        Assert.Equal([["t", "h"]], Groups(g));
        AssertSameResults(g, seed: 4);
    }

    [Fact]
    public void IndependentChainsMergeThroughTheNodeThatReadsBoth()
    {
        var g = Compile("""
            dim b = 4, d = 8
            input x: f32[b, d]
            input y: f32[b, d]
            a = exp(x)
            c = sigmoid(y)
            a2 = a * 2
            c2 = c + 1
            z = a2 - c2
            output z
            """);
        Assert.Equal([["a", "c", "a2", "c2", "z"]], Groups(g));
        var group = LoopFusion.Plan(g).Groups[0];
        Assert.Single(group.Constants.Values, 2.0);
        Assert.Equal(["z"], group.Outputs.Select(v => v.Name));
    }

    [Fact]
    public void DonationWaitsForTheLoopThatReadsTheBuffer()
    {
        // u is read by the group {m, n}, whose loop runs at n; t = u * r in between (a broadcast, so not a sibling of
        // m) is u's last reader in node order, but not in execution order: donating u to it would hand the loop a
        // buffer already overwritten.
        var g = Compile("""
            dim b = 4, d = 8
            dim e = 2
            input x: f32[b, d]
            input w: f32[d, e]
            input r: f32[d]
            u = exp(x)
            p = einsum(u[b, d], w[d, e] -> [b, e])
            m = u * x
            t = u * r
            n = m * m
            output n
            output t
            output p
            """);
        var fusion = LoopFusion.Plan(g);
        Assert.Equal([["m", "n"]], Groups(g));
        var unfused = BufferReuse.Plan(g).ToDictionary(kv => kv.Key.Outputs[0].Name, kv => kv.Value);
        Assert.True(unfused.ContainsKey("t"));       // without fusion, t may take u's buffer: m has read it already
        var fused = BufferReuse.Plan(g, fusion: fusion).ToDictionary(kv => kv.Key.Outputs[0].Name, kv => kv.Value);
        Assert.False(fused.ContainsKey("t"));        // with fusion, m's loop runs after t
        AssertSameResults(g, seed: 1);
    }

    [Theory]
    [InlineData("exp(v)", 0)]       // u's last read (v) comes before w is written: w takes u's buffer
    [InlineData("v + u", -1)]       // w's own statement reads u: writing it over u would race the read
    public void ALoopWritesIntoADeadOperandOnlyAfterItsLastRead(string w, int donor)
    {
        var g = Compile($"""
            dim b = 4, d = 8, e = 6
            input x: f32[b, d]
            input m: f32[d, e]
            u = einsum(x[b, d], m[d, e] -> [b, e])
            v = u * 2
            w = {w}
            output w
            """);
        var fusion = LoopFusion.Plan(g);
        var group = Assert.Single(fusion.Groups);
        Assert.Equal([donor], BufferReuse.PlanLoops(g, fusion)[group]);
        AssertSameResults(g, seed: 2);
    }

    [Fact]
    public void EveryFusibleOpHasItsSpanPrimitive()
    {
        var ew = typeof(Ew).GetMethods(BindingFlags.Public | BindingFlags.Static);
        var fusible = OpTable.All.Where(o => o.LoopPrimitive is not null).ToList();
        Assert.Contains(fusible, o => o.Name == "silu_grad");
        foreach (var op in fusible)
        {
            var arity = op.Signature.MaxOperands;
            Assert.True(ew.Any(m => m.Name == op.LoopPrimitive && m.GetParameters().Length == arity + 1
                && m.GetParameters().All(p => p.ParameterType != typeof(float))),
                $"{op.Name}: no Ew.{op.LoopPrimitive} over {arity} span(s)");
            // An op that takes a rank-0 operand needs the span·scalar and scalar·span forms too.
            if (arity == 2 && TakesScalars(op))
                Assert.Equal(3, ew.Count(m => m.Name == op.LoopPrimitive && m.GetParameters().Length == 3));
        }
    }

    private static bool TakesScalars(OpDef op)
    {
        var full = new TensorType(DType.F32, new Dim("d", 4));
        try
        {
            op.Infer(new InferContext(op, [full, new TensorType(DType.F32)], System.Collections.Immutable.ImmutableSortedDictionary<string, Attr>.Empty,
                new Dictionary<string, Dim>()));
            return true;
        }
        catch (TypeErrorException)
        {
            return false;
        }
    }

    public static TheoryData<int> Seeds => new() { 1, 2, 3, 4, 5, 6 };

    /// <summary>Random chains of every fusible op over shapes around the chunk size (one chunk, a ragged last chunk,
    /// several per thread: the largest is over twice OpenMpTeam.GrainElements, so it runs
    /// on two workers), fused vs unfused.</summary>
    [Theory]
    [MemberData(nameof(Seeds))]
    public void RandomChainsComputeWhatTheUnfusedProgramDoes(int seed)
    {
        var rng = new Random(seed);
        long[] sizes = [1, 7, FusedLoop.ChunkElements / 8, FusedLoop.ChunkElements + 3, 5 * FusedLoop.ChunkElements / 2 + 1, 4 * FusedLoop.ChunkElements + 9];
        long n = sizes[seed % sizes.Length];
        var text = new System.Text.StringBuilder(string.Create(CultureInfo.InvariantCulture, $"dim b = {(n % 2 == 0 ? 2 : 1)}, d = {(n % 2 == 0 ? n / 2 : n)}\n"));
        text.Append("input x: f32[b, d]\ninput y: f32[b, d]\ninput s: f32[]\n");
        var live = new List<string> { "x", "y" };
        string Pick() => live[rng.Next(live.Count)];
        // Ops kept in safe domains: log/sqrt/rsqrt of something positive, division by something away from zero.
        string[] forms =
        [
            "{0} + {1}", "{0} - {1}", "{0} * {1}", "{0} / (exp({1}) + 1)", "maximum({0}, {1})", "minimum({0}, {1})",
            "{0} * s", "s - {0}", "{0} * 0.5", "2 - {0}", "-{0}", "tanh({0})", "sigmoid({0})", "silu({0})", "square({0})",
            "log(exp({0}) + 1)", "sqrt(square({0}) + 1)", "rsqrt(square({0}) + 0.5)", "exp(-square({0}))", "maximum({0}, s)",
        ];
        for (int i = 0; i < 14; i++)
        {
            var name = $"v{i}";
            text.Append(CultureInfo.InvariantCulture, $"{name} = {string.Format(CultureInfo.InvariantCulture, forms[rng.Next(forms.Length)], Pick(), Pick())}\n");
            live.Add(name);
        }
        // Some intermediates are outputs too (loop results read outside), some live only in scratch chunks.
        foreach (var o in live.Skip(2).Where((_, i) => i % 4 == 3).Append(live[^1]).Distinct()) text.Append($"output {o}\n");
        var g = Compile(text.ToString());
        Assert.NotEmpty(LoopFusion.Plan(g).Groups);
        AssertSameResults(g, seed);
    }

    [Fact]
    public void SiluGradMatchesTheRuntimeOp()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var x = randn(3 * FusedLoop.ChunkElements + 11) * 4;
        var dy = randn(x.shape);
        var kernel = new LoopKernel(c => Ew.SiluGrad(c.In(0), c.In(1), c.Out(0)));
        var fused = Rt.Fused(kernel, 0, [dy, x], [], [-1])[0];
        Assert.True(fused.allclose(Rt.SiluGrad(dy, x), rtol: 1e-5, atol: 1e-6));
    }

    [Fact]
    public void StridedOperandsAreReadInTheirLogicalOrder()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var a = randn(64, 300).t();                 // [300, 64], not contiguous
        var b = randn(300, 64);
        var kernel = new LoopKernel(c => Ew.Sub(c.In(0), c.In(1), c.Out(0)));
        Assert.True(Rt.Fused(kernel, 0, [a, b], [], [-1])[0].allclose(a - b, rtol: 0, atol: 0));
    }

    [Theory]
    [InlineData(3, 1024, 3072)]                                   // a SwiGLU half: rows of d_ff in a fused projection's output
    [InlineData(2, FusedLoop.ChunkElements + 5, FusedLoop.ChunkElements + 40)]  // rows longer than a chunk
    [InlineData(5, 1100, 1100)]                                   // a slice that is the whole row: dense after all
    public void SlicesOfWiderRowsAreReadInPlace(int rows, int columns, int width)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var wide = randn(rows, 2, width);
        var a = wide.narrow(2, width - columns, columns);              // strided: rows of `columns` at a row stride of `width`
        var b = randn(rows, 2, columns);
        var c = randn(1, 1, columns).expand(rows, 2, columns);         // one row broadcast to all: row stride 0
        var kernel = new LoopKernel(k =>
        {
            Ew.Sub(k.In(0), k.In(1), k.Temp(0));
            Ew.Mul(k.Temp(0), k.In(2), k.Out(0));
            Ew.Add(k.In(0), k.In(2), k.Out(1));
        });
        var before = wide.clone();
        var results = Rt.Fused(kernel, 1, [a, b, c], [], [-1, -1]);
        Assert.True(results[0].eq((a - b) * c).all().item<bool>());
        Assert.True(results[1].eq(a + c).all().item<bool>());
        Assert.True(wide.eq(before).all().item<bool>());                               // operands are read, never written
        // A narrowed middle dim cannot fold into rows of a fixed stride: copied first, with the same results.
        var middle = randn(rows, 5, columns).narrow(1, 1, 2);
        Assert.True(Rt.Fused(kernel, 1, [middle, b, c], [], [-1, -1])[0].eq((middle - b) * c).all().item<bool>());
    }

    private static void AssertSameResults(Graph g, int seed)
    {
        var fused = RoslynCompiler.CompileInMemory(Emitter.Emit(g));
        var unfused = RoslynCompiler.CompileInMemory(Emitter.Emit(g, options: new CodeGenOptions { FuseLoops = false }));
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var gen = new TorchSharp.torch.Generator((ulong)seed);
        var inputs = fused.Inputs.Select(i => randn(i.Shape, generator: gen).to_type(i.DType)).ToArray();
        var a = fused.Forward([], inputs);
        var b = unfused.Forward([], inputs);
        Assert.Equal(b.Length, a.Length);
        for (int i = 0; i < a.Length; i++)
            Assert.True(a[i].allclose(b[i], rtol: 1e-5, atol: 1e-6),
                $"output {fused.Outputs[i].Name}: max difference {(a[i] - b[i]).abs().max().item<float>()}");
    }
}
