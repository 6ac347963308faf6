using System.Globalization;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.CodeGen.Tests;

/// <summary>
/// Fused loops whose ops all have a vector form (<see cref="Ev"/>) run each chunk as one vector pass and finish its
/// ragged end with the span primitives: the results must be the same bits as the span-only kernel
/// (<see cref="CodeGenOptions.VectorizeLoops"/> off), or within 1e-6 with exp-based ops, over random chains of those
/// ops, scalars, constants and lengths that leave tails of every kind.
/// </summary>
public sealed class LoopVectorizationTests
{
    private static Graph Compile(string text) => Frontend.CompileText("vectorize.palm", text);

    public static TheoryData<int> Seeds => new() { 1, 2, 3, 4, 5, 6, 7, 8 };

    /// <summary>Arithmetic, square roots and their reciprocals: one IEEE operation each, the same bits.</summary>
    [Theory]
    [MemberData(nameof(Seeds))]
    public void VectorLoopsGiveTheSpanKernelsBits(int seed) => CheckRandomChain(seed, transcendental: false);

    /// <summary>
    /// With exp, sigmoid and silu too: their span forms run <see cref="VectorExp"/>'s vector code on every element, the
    /// ragged end a vector loop leaves included (see <see cref="SiluGradsVectorFormIsItsSpanFormsBits"/>), so these are
    /// the same bits as well.
    /// </summary>
    [Theory]
    [MemberData(nameof(Seeds))]
    public void VectorLoopsWithExpGiveTheSpanKernelsBits(int seed) => CheckRandomChain(seed, transcendental: true);

    private static void CheckRandomChain(int seed, bool transcendental)
    {
        var rng = new Random(seed);
        long[] sizes = [1, 15, 17, 16 * 5 + 7, FusedLoop.ChunkElements - 1, FusedLoop.ChunkElements + 3, 2 * FusedLoop.ChunkElements + 33, 5 * FusedLoop.ChunkElements / 2 + 9];
        long n = sizes[seed % sizes.Length];
        var text = new System.Text.StringBuilder(string.Create(CultureInfo.InvariantCulture, $"dim d = {n}\n"));
        text.Append("input x: f32[d]\ninput y: f32[d]\ninput s: f32[]\n");
        var live = new List<string> { "x", "y" };
        string Pick() => live[rng.Next(live.Count)];
        // Only ops with a vector form, kept in safe domains.
        string[] forms =
        [
            "{0} + {1}", "{0} - {1}", "{0} * {1}", "{0} / (square({1}) + 1)", "{0} * s", "s - {0}", "{0} / s", "{0} * 0.3",
            "2 - {0}", "-{0}", "square({0})", "sqrt(square({0}) + 0.5)", "rsqrt(square({0}) + 0.25)", "0.7 / (square({0}) + 2)",
            .. transcendental ? (string[])["exp(-square({0}))", "sigmoid({0}) * {1}", "silu({0})"] : [],
        ];
        for (int i = 0; i < 12; i++)
        {
            var name = $"v{i}";
            text.Append(CultureInfo.InvariantCulture, $"{name} = {string.Format(CultureInfo.InvariantCulture, forms[rng.Next(forms.Length)], Pick(), Pick())}\n");
            live.Add(name);
        }
        foreach (var o in live.Skip(2).Where((_, i) => i % 3 == 2).Append(live[^1]).Distinct()) text.Append($"output {o}\n");
        var g = Compile(text.ToString());

        var vectorSource = Emitter.Emit(g);
        Assert.Contains("Ev.Accelerated", vectorSource.Text);
        var vector = RoslynCompiler.CompileInMemory(vectorSource);
        var spans = RoslynCompiler.CompileInMemory(Emitter.Emit(g, options: new CodeGenOptions { VectorizeLoops = false }));
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)seed);
        var inputs = vector.Inputs.Select(i => randn(i.Shape, generator: gen).to_type(i.DType)).ToArray();
        var a = vector.Forward([], inputs);
        var b = spans.Forward([], inputs);
        Assert.Equal(b.Length, a.Length);
        for (int i = 0; i < a.Length; i++)
        {
            var (va, vb) = (a[i].contiguous().data<float>().ToArray(), b[i].contiguous().data<float>().ToArray());
            int differ = va.Zip(vb).Count(p => BitConverter.SingleToInt32Bits(p.First) != BitConverter.SingleToInt32Bits(p.Second));
            Assert.True(differ == 0, $"output {vector.Outputs[i].Name} (n = {n}): {differ} elements differ in their bits");
        }
    }

    /// <summary>silu_grad comes only from autodiff, so it is checked against its span primitive directly.</summary>
    [Fact]
    public void SiluGradsVectorFormIsItsSpanFormsBits()
    {
        var rng = new Random(3);
        int n = 16 * 64;
        var dy = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 8 - 4)).ToArray();
        var x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 40 - 20)).ToArray();
        var spans = new float[n];
        var vectors = new float[n];
        Ew.SiluGrad(dy, x, spans);
        for (int i = 0; i < n; i += Ev.Width) Ev.Store(Ev.SiluGrad(Ev.Load(dy, i), Ev.Load(x, i)), vectors, i);
        Assert.Equal(spans.Select(BitConverter.SingleToInt32Bits), vectors.Select(BitConverter.SingleToInt32Bits));
    }

    [Fact]
    public void AChainWithoutAVectorFormKeepsTheSpanKernel()
    {
        var g = Compile("""
            dim d = 64
            input x: f32[d]
            input y: f32[d]
            v = tanh(x * y) + x
            output v
            """);
        Assert.NotEmpty(LoopFusion.Plan(g).Groups);
        Assert.DoesNotContain("Ev.Accelerated", Emitter.Emit(g).Text);
    }
}
