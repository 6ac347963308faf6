using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

/// <summary>
/// Budgets for the managed garbage of the runtime's busiest calls at palm-tiny's sizes. There a step's few hundred
/// calls each do microseconds of arithmetic, and what they allocate decides how often the garbage collector pauses the
/// step: 663 KB a step made a 2 ms gen1 pause every few steps, the tail of palm-tiny's step times (docs/performance.md).
/// Each budget is about twice what the call allocates now and below what it allocated when shapes and strides were
/// read through <c>Tensor.shape</c> and <c>stride()</c> and plans were made with LINQ (in brackets), so reintroducing
/// either fails here. The count is this thread's (<see cref="GC.GetAllocatedBytesForCurrentThread"/>), exact and
/// unaffected by other tests; the calls are warmed up first, so one-time caches and the JIT do not count.
/// </summary>
public sealed class ManagedAllocationTests
{
    /// <summary>Managed bytes a call of <paramref name="call"/> allocates, each call in its own dispose scope (as the
    /// generated step's layer loops run them), after 50 calls of warm-up.</summary>
    private static double BytesPerCall(Action call)
    {
        void Scoped()
        {
            using var scope = NewDisposeScope();
            call();
        }
        for (int i = 0; i < 50; i++) Scoped();
        long before = GC.GetAllocatedBytesForCurrentThread();
        const int calls = 200;
        for (int i = 0; i < calls; i++) Scoped();
        return (GC.GetAllocatedBytesForCurrentThread() - before) / (double)calls;
    }

    [Fact]
    public void AFusedLoopsSetUpAllocatesLittle()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var (gate, up) = (randn(8, 16, 256), randn(8, 16, 256));
        LoopKernel kernel = c => Ew.Mul(c.In(0), c.In(1), c.Out(0));
        Tensor[] inputs = [gate, up], none = [];
        int[] donors = [-1];
        var bytes = BytesPerCall(() => Rt.Fused(kernel, 0, inputs, none, donors));
        Assert.True(bytes < 2048, $"a fused loop allocated {bytes:F0} bytes a call (4728 before)");
    }

    [Fact]
    public void AnEinsumsPlanAllocatesLittle()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var (h, w, dy) = (randn(8, 16, 64), randn(64, 576), randn(8, 16, 576));
        var forward = BytesPerCall(() => Rt.Einsum("abc,cd->abd", h, w));
        var weightGradient = BytesPerCall(() => Rt.Einsum("abc,abd->cd", h, dy));
        Assert.True(forward < 3072, $"abc,cd->abd allocated {forward:F0} bytes a call (7832 before)");
        Assert.True(weightGradient < 3072, $"abc,abd->cd allocated {weightGradient:F0} bytes a call (7744 before)");
    }

    [Fact]
    public void CausalAttentionsProductsAllocateLittle()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var (q, k) = (randn(8, 16, 4, 16), randn(8, 16, 16));
        var probs = randn(8, 4, 16, 16).softmax(3);
        var scores = BytesPerCall(() => Rt.CausalEinsumSoftmax("abcd,aed->acbe", "b", "e", 1, 2, 3, [q, k]));
        var attention = BytesPerCall(() => Rt.CausalEinsum("abcd,ade->acbe", "c", "d", 1, [probs, k]));
        Assert.True(scores < 6144, $"the causal scores and softmax allocated {scores:F0} bytes a call (10992 before)");
        Assert.True(attention < 8192, $"probabilities · values allocated {attention:F0} bytes a call (14160 before)");
    }

    [Fact]
    public void TheOptimizersMeansOfSquaresAllocateLittle()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var w = randn(2, 64, 256);
        long[] inner = [2], middle = [1];
        var rows = BytesPerCall(() => Rt.MeanSquares(w, inner));
        var chunked = BytesPerCall(() => Rt.MeanSquares(w, middle));
        // Over the innermost dim, most of it is data: each row's fp64 sum and partial sums (128 rows here).
        Assert.True(rows < 4096, $"a mean of squares over the innermost dim allocated {rows:F0} bytes a call (6824 before)");
        Assert.True(chunked < 3072, $"a mean of squares over a middle dim allocated {chunked:F0} bytes a call (3200 before)");
    }
}
