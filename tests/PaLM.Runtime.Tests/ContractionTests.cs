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
}
