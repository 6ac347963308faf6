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

    /// <summary>Rt ready, and the case's generator and sizes (batch, heads, keys, head size).</summary>
    private static (Generator G, long B, long H, long T, long D) Start(int seed, long s)
    {
        Rt.Initialize();
        var (b, h, _, t, d) = Sizes(seed, s);
        return (new Generator((ulong)seed), b, h, t, d);
    }

    /// <summary>Probabilities [b, h, s, t]: zero where key &gt; query, as causal_softmax makes them.</summary>
    private static Tensor Probs(Generator g, long b, long h, long s, long t) => Rt.CausalSoftmax(randn([b, h, s, t], generator: g), 2, 3);

    private static void Same(Tensor expected, Tensor actual) =>
        Assert.True(actual.allclose(expected, rtol: 1e-5, atol: 1e-5), $"max difference {(actual - expected).abs().max().item<float>()}");

    [Theory]
    [MemberData(nameof(Cases))]
    public void BothLabelsKeptMatchesOnTheCausalHalf(int seed, long s, long blocks)
    {
        using var scope = NewDisposeScope();
        var (g, b, h, t, d) = Start(seed, s);
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
        using var scope = NewDisposeScope();
        var (g, b, h, t, d) = Start(seed, s);
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

    /// <summary>
    /// The direct BLAS plan (<see cref="Contraction.RunCausal"/>) against the full einsum on all six of attention's
    /// products, with operands laid out as palm-cpu's step lays them out: the values a column slice of the fused
    /// projection's output, the attention output's cotangent a slice of a wider join (its heads and queries do not merge,
    /// so the plan copies it), probabilities computed by the plan itself as [b, s, h, t] and read as [b, h, s, t].
    /// The plan must apply to every one of them (that is where the step's time goes) and agree with the full product on
    /// the causal half (the rest of a diagonal block is computed, as on the general path; past it, zeros).
    /// </summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void DirectBlocksMatchTheFullProductOnAttentionsLayouts(int seed, long s, long blocks)
    {
        using var scope = NewDisposeScope();
        var (g, b, h, t, d) = Start(seed, s);
        var q = randn([b, s, h, d], generator: g);
        var k = randn([b, t, d], generator: g);
        var v = randn([b, t, 3 * d + 1], generator: g).narrow(2, d + 1, d);
        var dOut = randn([b, s, h * d + 5], generator: g).narrow(2, 0, h * d).view(b, s, h, d);
        var scores = Direct("abcd,aed->acbe", 'b', 'e', blocks, q, k);
        var above = ones(s, t, ScalarType.Bool).triu(1);
        Same(Rt.Einsum("abcd,aed->acbe", q, k).masked_fill(above, 0), scores.masked_fill(above, 0));
        // Past each block's last query, the keys it skipped hold zeros.
        var skipped = zeros([s, t], ScalarType.Bool);
        for (long i = 0, n = Math.Clamp(blocks, 1, s); i < n; i++)
        {
            long lo = s * i / n, hi = s * (i + 1) / n;
            if (hi < t) skipped[TensorIndex.Slice(lo, hi), TensorIndex.Slice(hi, t)] = tensor(true);
        }
        Assert.True(scores.masked_select(skipped.expand_as(scores)).eq(0).all().item<bool>());
        var p = Rt.CausalSoftmax(scores, 2, 3);
        var dProbs = Rt.SoftmaxGrad(Direct("abcd,aed->acbe", 'b', 'e', blocks, dOut, v), p, 3);
        Same(Rt.Einsum("abcd,aed->acbe", dOut, v).masked_fill(above, 0), Direct("abcd,aed->acbe", 'b', 'e', blocks, dOut, v).masked_fill(above, 0));
        Same(Rt.Einsum("abcd,ade->acbe", p, v), Direct("abcd,ade->acbe", 'c', 'd', blocks, p, v));
        Same(Rt.Einsum("abcd,acbe->aed", dOut, p), Direct("abcd,acbe->aed", 'b', 'e', blocks, dOut, p));
        Same(Rt.Einsum("abcd,acbe->ade", dProbs, q), Direct("abcd,acbe->ade", 'c', 'd', blocks, dProbs, q));
        Same(Rt.Einsum("abcd,ade->acbe", dProbs, k), Direct("abcd,ade->acbe", 'c', 'd', blocks, dProbs, k));
    }

    /// <summary>Where the split label does not lead its group (queries stored inside the heads), the plan declines and
    /// the general path gives the same product.</summary>
    [Fact]
    public void APlanThatDoesNotFitDeclinesAndTheGeneralPathRunsIt()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator(7);
        var q = randn([2, 3, 9, 4], generator: g).permute(0, 2, 1, 3);   // [b, s, h, d] stored as [b, h, s, d]
        var k = randn([2, 9, 4], generator: g);
        Assert.True(Contraction.TryParse("abcd,aed->acbe", out var plan));
        Assert.Null(plan.RunCausal(q, k, 'b', 'e', 3));
        var above = ones(9, 9, ScalarType.Bool).triu(1);
        Same(Rt.Einsum("abcd,aed->acbe", q, k).masked_fill(above, 0), Rt.CausalEinsum("abcd,aed->acbe", "b", "e", 3, [q, k]).masked_fill(above, 0));
    }

    /// <summary>The split label on the product's columns and the other on its rows (the output lists the keys before
    /// the queries): the direct plan zeroes rows, not columns, past each block.</summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void BlocksAlongTheColumnsMatchTheFullProduct(int seed, long s, long blocks)
    {
        using var scope = NewDisposeScope();
        var (g, b, h, t, d) = Start(seed, s);
        var k = randn([b, t, d], generator: g);
        var q = randn([b, s, h, d], generator: g);
        const string spec = "aed,abcd->aebc";                        // [b, t, s, h]: keys on the rows
        var keyAfterQuery = ones([t, s], ScalarType.Bool).tril(-1).unsqueeze(-1);
        var direct = Direct(spec, 'b', 'e', blocks, k, q);
        Same(Rt.Einsum(spec, k, q).masked_fill(keyAfterQuery, 0), direct.masked_fill(keyAfterQuery, 0));
        Assert.True(direct.isfinite().all().item<bool>());
    }

    /// <summary>
    /// The softmax epilogues against the product followed by the row kernels: the forward's probabilities the same bits,
    /// the gradient's result equal to rounding for a y that is not zero above the diagonal; more keys than queries, and
    /// sizes past two grains of elements, so that the rows are split between two workers.
    /// </summary>
    [Theory]
    [InlineData(1, 9, 9, 2)]
    [InlineData(2, 37, 40, 4)]
    [InlineData(3, 200, 203, 2)]     // 2 · 300 rows · 203 keys a block: two workers
    public void SoftmaxEpiloguesMatchTheProductThenTheRowKernels(int seed, long s, long t, long blocks)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        const long b = 2, h = 3, d = 8;
        var q = randn([b, s, h, d], generator: g);
        var k = randn([b, t, d], generator: g);
        var v = randn([b, t, 3 * d], generator: g).narrow(2, d, d);
        var dOut = randn([b, s, h, d], generator: g);
        var y = randn([b, h, s, t], generator: g);
        const string spec = "abcd,aed->acbe";
        Assert.True(Contraction.TryParse(spec, out var plan));
        var probs = plan.RunCausal(q, k, 'b', 'e', blocks, new SoftmaxEpilogue());
        Assert.NotNull(probs);
        Assert.True(probs.eq(Rt.CausalSoftmax(Rt.CausalEinsum(spec, "b", "e", blocks, [q, k]), 2, 3)).all().item<bool>());
        var dx = plan.RunCausal(dOut, v, 'b', 'e', blocks, new SoftmaxGradEpilogue(y));
        Assert.NotNull(dx);
        // The row's Σ dy·y is summed over the computed keys here and over the whole row (zeros past the block) by the
        // row kernel, in another order: equal to float rounding of the largest values.
        var expected = Rt.SoftmaxGrad(Rt.CausalEinsum(spec, "b", "e", blocks, [dOut, v]), y, 3);
        var scale = expected.abs().max().item<float>();
        Assert.True((dx - expected).abs().max().item<float>() <= 1e-6 * scale + 1e-6, $"max difference {(dx - expected).abs().max().item<float>()} of values up to {scale}");
        // The Rt entry points the generated code calls take the same path.
        Assert.True(dx.eq(Rt.CausalEinsumSoftmaxGrad("abcd,aed,acbe->acbe", "b", "e", blocks, 3, [dOut, v, y])).all().item<bool>());
        Assert.True(probs.eq(Rt.CausalEinsumSoftmax(spec, "b", "e", blocks, 2, 3, [q, k])).all().item<bool>());
    }

    /// <summary>
    /// The direct plan shares its blocks out between the op's threads, one single-threaded BLAS call each
    /// (<see cref="CausalBlockProducts"/>): all six of attention's products and both epilogues must give the same bits
    /// on one thread as on two, and the two-thread result must not depend on the run.
    /// </summary>
    [Fact]
    public void BlocksGiveTheSameBitsOnOneThreadAsOnTwo()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator(11);
        const long b = 2, s = 70, h = 3, d = 16, blocks = 5;
        var q = randn([b, s, h, d], generator: g);
        var k = randn([b, s, d], generator: g);
        var v = randn([b, s, 3 * d], generator: g).narrow(2, d, d);
        var dOut = randn([b, s, h * d + 5], generator: g).narrow(2, 0, h * d).view(b, s, h, d);
        var y = Rt.CausalSoftmax(randn([b, h, s, s], generator: g), 2, 3);
        Tensor[] All() =>
        [
            Rt.CausalEinsumSoftmax("abcd,aed->acbe", "b", "e", blocks, 2, 3, [q, k]),
            Rt.CausalEinsumSoftmaxGrad("abcd,aed,acbe->acbe", "b", "e", blocks, 3, [dOut, v, y]),
            Rt.CausalEinsum("abcd,aed->acbe", "b", "e", blocks, [q, k]),
            Rt.CausalEinsum("abcd,ade->acbe", "c", "d", blocks, [y, v]),
            Rt.CausalEinsum("abcd,acbe->aed", "b", "e", blocks, [dOut, y]),
            Rt.CausalEinsum("abcd,acbe->ade", "c", "d", blocks, [y, q]),
            Rt.CausalEinsum("aed,abcd->aebc", "b", "e", blocks, [k, q]),
        ];
        // Each on a thread of its own: set_num_threads is per thread, as the in-process mesh's device threads set it.
        Tensor[] On(int threads)
        {
            Tensor[] result = [];
            var thread = new Thread(() =>
            {
                set_num_threads(threads);
                result = All();
            });
            thread.Start();
            thread.Join();
            return result;
        }
        var (two, again, one) = (On(2), On(2), On(1));
        for (int i = 0; i < two.Length; i++)
        {
            Assert.True(two[i].eq(again[i]).all().item<bool>(), $"product {i}: two runs on two threads differ");
            Assert.True(two[i].eq(one[i]).all().item<bool>(), $"product {i}: one thread and two differ by {(two[i] - one[i]).abs().max().item<float>()}");
        }
        foreach (var t in two.Concat(again).Concat(one)) t.Dispose();
    }

    private static Tensor Direct(string spec, char q, char k, long blocks, Tensor x, Tensor y)
    {
        Assert.True(Contraction.TryParse(spec, out var plan));
        var result = plan.RunCausal(x, y, q, k, blocks);
        Assert.NotNull(result);
        return result;
    }
}
