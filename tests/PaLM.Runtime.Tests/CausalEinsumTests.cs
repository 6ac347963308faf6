using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

/// <summary>
/// The block-skipping einsum against the full one, on attention's four shapes of product: scores and the
/// probabilities' cotangent (both labels kept: only the causal half is compared, the rest must be finite), the
/// probabilities times the values and the score gradient times the keys (query kept), and the two gradients that
/// contract the query (key kept). Sizes that blocks do not divide, and more keys than queries, included.
/// </summary>
public sealed class CausalEinsumTests
{
    public static TheoryData<int, long, long> Cases => new() { { 1, 1, 1 }, { 2, 3, 3 }, { 3, 8, 8 }, { 4, 5, 2 }, { 5, 37, 4 } };

    private static (long B, long H, long S, long T, long D) Sizes(int seed, long s)
    {
        var rng = new Random(seed);
        return (rng.Next(1, 3), rng.Next(1, 4), s, s + (seed % 2 == 0 ? 0 : rng.Next(1, 4)), rng.Next(2, 9));
    }

    /// <summary>Probabilities [b, h, s, t]: zero where key &gt; query, as causal_softmax makes them.</summary>
    private static Tensor Probs(Generator g, long b, long h, long s, long t) => Rt.CausalSoftmax(randn([b, h, s, t], generator: g), 2, 3);

    private static void Same(Tensor expected, Tensor actual) =>
        Assert.True(actual.allclose(expected, rtol: 1e-5, atol: 1e-5), $"max difference {(actual - expected).abs().max().item<float>()}");

    [Theory]
    [MemberData(nameof(Cases))]
    public void BothLabelsKeptMatchesOnTheCausalHalf(int seed, long s, long blocks)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var (b, h, _, t, d) = Sizes(seed, s);
        var q = randn([b, s, h, d], generator: g);
        var k = randn([b, t, d], generator: g);
        const string spec = "abcd,aed->acbe";                        // scores [b, h, s, t]
        var full = Rt.Einsum(spec, q, k);
        var causal = Rt.CausalEinsum(spec, "b", "e", blocks, [q, k]);
        var above = ones(s, t, ScalarType.Bool).triu(1);
        Same(full.masked_fill(above, 0), causal.masked_fill(above, 0));
        Assert.True(causal.isfinite().all().item<bool>());
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void AZeroTriangleOperandGivesTheFullProduct(int seed, long s, long blocks)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var (b, h, _, t, d) = Sizes(seed, s);
        var p = Probs(g, b, h, s, t);
        var v = randn([b, t, d], generator: g);
        var dOut = randn([b, s, h, d], generator: g);
        var qs = randn([b, s, h, d], generator: g);
        // query kept: probs · values → [b, s, h, d]; score gradient · keys likewise
        Same(Rt.Einsum("abcd,ade->acbe", p, v), Rt.CausalEinsum("abcd,ade->acbe", "c", "d", blocks, [p, v]));
        // key kept, query contracted: values' gradient [b, t, d] and keys' gradient
        Same(Rt.Einsum("abcd,acbe->aed", dOut, p), Rt.CausalEinsum("abcd,acbe->aed", "b", "e", blocks, [dOut, p]));
        Same(Rt.Einsum("abcd,acbe->ade", p, qs), Rt.CausalEinsum("abcd,acbe->ade", "c", "d", blocks, [p, qs]));
    }
}
