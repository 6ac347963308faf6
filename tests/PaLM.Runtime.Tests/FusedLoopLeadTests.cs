using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

/// <summary>
/// Fused loops with lead operands (over the loop's first dims, as the Adafactor update's per-layer factors) against
/// TorchSharp's broadcasting, and the one-read sum of squares against an fp64 sum: on sizes that do and do not divide
/// into chunks, on layouts the loop must copy, into slices, and across launch segments.
/// </summary>
[Collection(nameof(FusedLoopSegmentsCollection))]
public sealed class FusedLoopLeadTests
{
    // (x / r - m) · s, and x · s: r over the first dim, s over the first two.
    private static readonly LoopKernel Kernel = c =>
    {
        Ew.Div(c.In(0), c.Lead(0), c.Temp(0));
        Ew.Sub(c.Temp(0), c.In(1), c.Temp(1));
        Ew.Mul(c.Temp(1), c.Lead(1), c.Out(0));
        Ew.Mul(c.In(0), c.Lead(1), c.Out(1));
    };

    private static (Tensor X, Tensor M, Tensor R, Tensor S) Operands(int seed, long a, long b, long e)
    {
        var g = new Generator((ulong)seed);
        return (randn([a, b, e], generator: g), randn([a, b, e], generator: g), rand([a], generator: g) + 0.5, randn([a, b], generator: g));
    }

    private static void AssertExact(Tensor x, Tensor m, Tensor r, Tensor s, Tensor[] results)
    {
        var s3 = s.unsqueeze(-1);
        Assert.True(results[0].eq((x / r.reshape(-1, 1, 1) - m) * s3).all().item<bool>());
        Assert.True(results[1].eq(x * s3).all().item<bool>());
    }

    [Theory]
    [InlineData(1, 3, 5, 7)]                                          // many values in one chunk's worth
    [InlineData(2, 2, 3, FusedLoop.ChunkElements + 5)]                // runs longer than a chunk, ragged
    [InlineData(3, 4, 2, 3 * FusedLoop.ChunkElements)]                // whole chunks, two workers
    public void LeadsHoldForTheirRunOfElements(int seed, long a, long b, long e)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var (x, m, r, s) = Operands(seed, a, b, e);
        AssertExact(x, m, r, s, Rt.Fused(Kernel, 2, [x, m], [], [r, s], [-1, -1]));
    }

    [Fact]
    public void OperandsOutOfRowMajorOrderAreCopiedAndDestinationsWrittenThrough()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var (x, m, r, s) = Operands(4, 3, 6, 4000);
        var xt = x.transpose(1, 2).contiguous().transpose(1, 2);      // same values, other memory order
        var wide = zeros(3, 6, 4100);
        var slice = wide.narrow(2, 100, 4000);                        // a destination that is a slice
        var results = Rt.Fused(Kernel, 2, [xt, m], [], [r, s], [-1, -1], [slice, null]);
        Assert.Same(slice, results[0]);
        AssertExact(x, m, r, s, results);
        Assert.True(wide.narrow(2, 0, 100).eq(0).all().item<bool>());  // nothing written outside the slice
        // A donor in row-major order is written over.
        var (x2, m2, r2, s2) = Operands(5, 2, 3, 50);
        var donor = m2.clone();
        var donated = Rt.Fused(Kernel, 2, [x2, donor], [], [r2, s2], [1, -1]);
        Assert.Same(donor, donated[0]);
        AssertExact(x2, m2, r2, s2, donated);
    }

    [Theory]
    [InlineData(3, 4, 1000, 1 << 12)]     // whole rows per segment
    [InlineData(2, 3, 5000, 1 << 12)]     // rows longer than a segment: each cut into pieces
    public void SegmentsKeepTheirLeadValues(long a, long b, long e, long segment)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var (x, m, r, s) = Operands(6, a, b, e);
        var saved = FusedLoop.SegmentElements;
        try
        {
            FusedLoop.SegmentElements = segment;
            AssertExact(x, m, r, s, Rt.Fused(Kernel, 2, [x, m], [], [r, s], [-1, -1]));
        }
        finally
        {
            FusedLoop.SegmentElements = saved;
        }
    }

    [Fact]
    public void RowsAtAStrideAreWalkedInPlace()
    {
        // A parameter group's member (rows of its own elements at the group's row stride) beside dense optimizer
        // state, its update written into itself: no copy in or out, and nothing outside it touched.
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var (x, m, r, s) = Operands(8, 3, 6, 2 * FusedLoop.MinRowElements);
        var group = randn([3, 6, 2 * FusedLoop.MinRowElements + 300], generator: new Generator(9));
        var outside = group.narrow(2, 0, 300).clone();
        var member = group.narrow(2, 300, 2 * FusedLoop.MinRowElements);
        member.copy_(x);
        var results = Rt.Fused(Kernel, 2, [member, m], [], [r, s], [-1, -1], [null, member]);
        Assert.Same(member, results[1]);
        AssertExact(x, m, r, s, results);
        Assert.True(group.narrow(2, 0, 300).eq(outside).all().item<bool>());
    }

    [Fact]
    public void ALeadMustSpanTheLoopsFirstDims()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var (x, m, _, _) = Operands(7, 2, 3, 5);
        var e = Assert.Throws<ArgumentException>(() => Rt.Fused(Kernel, 2, [x, m], [], [ones(3), ones(2, 3)], [-1, -1]));
        Assert.Contains("lead operand", e.Message);
    }

    [Theory]
    [InlineData(1, new long[] { 6, 768, 300 }, new long[] { 1, 2 })]          // per-layer mean of a stacked weight
    [InlineData(2, new long[] { 5, RowKernels.SquaresBlock * 3 + 17 }, new long[] { 1 })]   // ragged last block
    [InlineData(3, new long[] { 4, 3, 1000 }, new long[] { 0, 1, 2 })]        // the whole tensor: rank 0
    [InlineData(4, new long[] { 3, 7 }, new long[] { 0 })]                    // not the innermost dims: TorchSharp's form
    public void SumOfSquaresMatchesAnFp64Sum(int seed, long[] shape, long[] axes)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var x = randn(shape, generator: new Generator((ulong)seed)) * 3;
        var exact = x.to_type(ScalarType.Float64).square().sum(axes);
        var sum = Rt.SumSquares(x, axes);
        var mean = Rt.MeanSquares(x, axes);
        Assert.Equal(exact.shape, sum.shape);
        Assert.True(sum.to_type(ScalarType.Float64).allclose(exact, rtol: 1e-6, atol: 0), $"max difference {(sum.to_type(ScalarType.Float64) - exact).abs().max().item<double>()}");
        var count = axes.Aggregate(1L, (n, d) => n * shape[d]);
        Assert.True(mean.to_type(ScalarType.Float64).allclose(exact / count, rtol: 1e-6, atol: 0));
        // The one-read kernel takes dense tensors (reduced over their innermost dims) and declines other layouts.
        if (axes.SequenceEqual(Enumerable.Range(shape.Length - axes.Length, axes.Length).Select(i => (long)i)))
        {
            var rows = RowKernels.SumSquaresRows(x, x.numel() / count, count);
            Assert.NotNull(rows);
            Assert.True(tensor(rows, ScalarType.Float64).allclose(exact.flatten(), rtol: 1e-6, atol: 0));
        }
        Assert.Null(RowKernels.SumSquaresRows(x.transpose(0, 1), x.numel() / count, count));
    }

    [Fact]
    public void AGroupMembersSumOfSquaresIsReadInPlace()
    {
        // [layers, d_model, own] at the group's row stride: each layer's rows tile its reduced elements.
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var group = randn([6, 768, 1000], generator: new Generator(10)) * 3;
        var member = group.narrow(2, 700, 300);
        var exact = member.to_type(ScalarType.Float64).square().sum([1, 2]);
        var rows = RowKernels.SumSquaresRows(member, 6, 768 * 300);
        Assert.NotNull(rows);
        Assert.True(tensor(rows, ScalarType.Float64).allclose(exact, rtol: 1e-6, atol: 0));
        Assert.True(Rt.MeanSquares(member, [1, 2]).to_type(ScalarType.Float64).allclose(exact / (768 * 300), rtol: 1e-6, atol: 0));
        // Rows that do not tile a reduced row (a reduction over the last dim only would; over the first two not).
        Assert.Null(RowKernels.SumSquaresRows(member.transpose(1, 2), 6, 768 * 300));
    }
}

/// <summary>Tests that change <see cref="FusedLoop.SegmentElements"/> run apart from other fused-loop tests in this
/// assembly (the setting is process-wide; any value computes the same results, but the tests mean to exercise theirs).</summary>
[CollectionDefinition(nameof(FusedLoopSegmentsCollection), DisableParallelization = true)]
public sealed class FusedLoopSegmentsCollection;
