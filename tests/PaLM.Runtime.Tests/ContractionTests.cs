using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

/// <summary>
/// Rt.Einsum's two-operand path (a batched matmul in the operands' memory order) against torch.einsum, over random
/// specs, sizes and operand layouts (contiguous, permuted views, slices of a wider tensor).
/// </summary>
public sealed class ContractionTests
{
    [Theory]
    [InlineData("bshd,btd->bhst")]   // attention scores (multi-query)
    [InlineData("bhst,btd->bshd")]   // probs · v
    [InlineData("bhst,bshd->btd")]   // d v
    [InlineData("abc,cd->abd")]
    [InlineData("abc,cde->abde")]
    [InlineData("abc,dc->abd")]
    [InlineData("abcd,cde->abe")]
    [InlineData("ab,ab->a")]         // batch and contracted only
    [InlineData("a,b->ab")]          // outer product: nothing contracted
    [InlineData("ab,bc->ca")]        // transposed output
    public void MatchesTorchEinsumOnEveryLayout(string spec)
    {
        Rt.Initialize();
        var rng = new Random(spec.GetHashCode(StringComparison.Ordinal));
        var sizes = new Dictionary<char, long>();
        foreach (var c in spec.Where(char.IsAsciiLetter)) if (!sizes.ContainsKey(c)) sizes[c] = rng.Next(1, 6);
        var parts = spec.Split("->")[0].Split(',');
        for (int trial = 0; trial < 12; trial++)
        {
            using var scope = NewDisposeScope();
            var x = Operand(parts[0], sizes, rng, trial);
            var y = Operand(parts[1], sizes, rng, trial / 3);
            var want = einsum(spec, x, y);
            var got = Rt.Einsum(spec, x, y);
            Assert.Equal(want.shape, got.shape);
            Assert.True(allclose(want, got, rtol: 1e-5, atol: 1e-5), $"{spec}, trial {trial}: max diff {(want - got).abs().max().item<float>()}");
        }
    }

    [Theory]
    [InlineData("abc,abd->dc")]      // a fused weight gradient laid out as the weights: the second operand's dims first
    [InlineData("abc,abd->cd")]
    [InlineData("ab,bc->ca")]
    public void ResultsComeOutInTheOutputsOrder(string spec)
    {
        // The matmul writes the output's own order (operands swapped where the output lists the second one's dims
        // first), not a transposed view that a later copy would have to gather.
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var parts = spec.Split("->")[0].Split(',');
        var sizes = new Dictionary<char, long> { ['a'] = 3, ['b'] = 5, ['c'] = 4, ['d'] = 6 };
        var x = randn([.. parts[0].Select(c => sizes[c])]);
        var y = randn([.. parts[1].Select(c => sizes[c])]);
        var got = Rt.Einsum(spec, x, y);
        Assert.True(got.is_contiguous(), $"{spec}: strides [{string.Join(", ", got.stride())}]");
        Assert.True(allclose(einsum(spec, x, y), got, rtol: 1e-5, atol: 1e-5));
    }

    [Fact]
    public void TheAttentionGradientReadsAPermutedViewInPlace()
    {
        // probs is computed as [b, s, h, t] and read as [b, h, s, t]; d attn is a slice of a fused projection's output.
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var probs = randn(2, 8, 3, 8).permute(0, 2, 1, 3);
        var dAttn = randn(2, 8, 3, 4);
        Assert.True(Contraction.TryParse("bhst,bshd->btd", out var c));
        Assert.True(c.ReadsInPlace(probs, dAttn));   // contracted (s, h) in memory order: [b, t, s·h] @ [b, s·h, d]
        Assert.True(allclose(einsum("bhst,bshd->btd", probs, dAttn), Rt.Einsum("bhst,bshd->btd", probs, dAttn), rtol: 1e-5, atol: 1e-5));
        // A slice of a fused projection cannot merge (s, h) (s strides over the whole fused width): that side copies.
        var sliced = randn(2, 8, 3 * 4 + 5).narrow(2, 0, 12).view(2, 8, 3, 4);
        Assert.False(c.ReadsInPlace(probs, sliced));
        Assert.True(allclose(einsum("bhst,bshd->btd", probs, sliced), Rt.Einsum("bhst,bshd->btd", probs, sliced), rtol: 1e-5, atol: 1e-5));
        // Contiguous [b, h, s, t] probs against [b, s, h, d]: (h, s) and (s, h) cannot both be views; one side copies.
        Assert.False(c.ReadsInPlace(randn(2, 3, 8, 8), dAttn));
    }

    [Fact]
    public void SpecsItDoesNotCoverFallBackToTorch()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var x = randn(3, 4);
        var y = randn(4, 5);
        var z = randn(5, 2);
        Assert.True(allclose(einsum("ab,bc->a", x, y), Rt.Einsum("ab,bc->a", x, y)));            // c summed out of one side
        Assert.True(allclose(einsum("ab,bc,cd->ad", x, y, z), Rt.Einsum("ab,bc,cd->ad", x, y, z)));   // three operands
        Assert.True(allclose(einsum("ab->b", x), Rt.Einsum("ab->b", x)));
    }

    // A tensor with the spec's dims in a random layout: contiguous, a permuted view, or a slice of a wider tensor.
    private static Tensor Operand(string labels, Dictionary<char, long> sizes, Random rng, int trial)
    {
        var shape = labels.Select(c => sizes[c]).ToArray();
        switch (trial % 3)
        {
            case 0:
                return randn(shape);
            case 1:
            {
                var perm = Enumerable.Range(0, shape.Length).OrderBy(_ => rng.Next()).Select(i => (long)i).ToArray();
                var inverse = new long[perm.Length];
                for (int i = 0; i < perm.Length; i++) inverse[perm[i]] = i;
                return randn(perm.Select(p => shape[p]).ToArray()).permute(inverse);
            }
            default:
            {
                var wide = shape.ToArray();
                wide[^1] += 3;
                return randn(wide).narrow(shape.Length - 1, 1, shape[^1]);
            }
        }
    }

    /// <summary>A product over a join read piece by piece (<c>Rt.EinsumOverPieces</c>) against the product of the
    /// made join, on layouts the emitter does not produce for palm-cpu: a batched product, the joined operand first,
    /// the join's dim leading the result, a narrowed piece, and a destination whose dims do not merge into rows of unit
    /// stride (each piece's product is then copied in).</summary>
    [Theory]
    [InlineData("bij,bjk->bik", 1, 2, true)]    // batched, joined along the result's last dim
    [InlineData("ij,jk->ik", 0, 0, true)]       // the joined operand first, along the result's rows
    [InlineData("ij,kj->ki", 1, 0, true)]       // the join's dim leads the result; operands read transposed
    [InlineData("bij,bjk->kbi", 1, 2, true)]    // the join's dim leads, the batch inside it
    [InlineData("bij,bjk->ikb", 1, 2, false)]   // the batch innermost: the slices' columns are not contiguous
    public void ProductsOverPiecesMatchTheProductOfTheJoin(string spec, int joined, long axis, bool direct)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var gen = new Generator(3);
        var specs = spec.Split("->")[0].Split(',');
        var sizes = new Dictionary<char, long> { ['b'] = 3, ['i'] = 37, ['j'] = 41, ['k'] = 17 };
        Tensor Make(string s, long joinedLength, bool isJoined) =>
            randn([.. s.Select((ch, d) => isJoined && d == axis ? joinedLength : sizes[ch])], generator: gen);
        var other = Make(specs[1 - joined], 0, false);
        // Three pieces; the middle one a narrowed view of a longer tensor.
        long[] lengths = [29, 300, 5];
        var pieces = lengths.Select((len, p) => p == 1 ? Make(specs[joined], 2 * len, true).narrow(axis, 0, len) : Make(specs[joined], len, true)).ToArray();
        var whole = cat(pieces, axis);
        var expected = joined == 0 ? Rt.Einsum(spec, whole, other) : Rt.Einsum(spec, other, whole);
        var actual = Rt.EinsumOverPieces(spec, joined, axis, other, pieces);
        Assert.Equal(expected.shape, actual.shape);
        Assert.True(actual.allclose(expected, rtol: 1e-5, atol: 1e-4), $"max difference {(actual - expected).abs().max().item<float>()}");
        // Whether BLAS writes each piece's product where it goes, or it is computed apart and copied in.
        Assert.True(Contraction.TryParse(spec, out var c));
        var outAxis = spec.Split("->")[1].IndexOf(specs[joined][(int)axis]);
        using var slice = empty_like(actual).narrow(outAxis, 0, lengths[0]);
        var (x, y) = joined == 0 ? (pieces[0], other) : (other, pieces[0]);
        Assert.Equal(direct, c.TryRunInto(x, y, slice));
    }

    /// <summary>A join along a label both operands have (a batch label) is no join of products: the runtime declines
    /// the piecewise plan and the product of the made join runs.</summary>
    [Fact]
    public void AJoinAlongABatchLabelTakesTheJoinedProduct()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var gen = new Generator(5);
        var x = randn([34, 7, 9], generator: gen);
        Tensor[] pieces = [randn([30, 9, 6], generator: gen), randn([4, 9, 6], generator: gen)];
        Assert.True(Contraction.TryParse("bij,bjk->bik", out var c));
        Assert.Null(c.RunOverPieces(1, 0, x, pieces));
        var expected = Rt.Einsum("bij,bjk->bik", x, cat(pieces, 0));
        Assert.True(Rt.EinsumOverPieces("bij,bjk->bik", 1, 0, x, pieces).allclose(expected, rtol: 1e-5, atol: 1e-5));
    }
}
