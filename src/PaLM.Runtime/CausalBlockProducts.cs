using PaLM.Runtime.Native;

namespace PaLM.Runtime;

/// <summary>
/// The block products of <see cref="Contraction.RunCausal"/>: one BLAS call per block and batch, each with its epilogue
/// rows (or its zeros) right after it, shared out whole between the op's threads, each call on one thread.
/// <para>
/// Why: the blocks are small products (the values' and keys' gradients are 64×64 per block over up to 6144
/// contracted elements; the scores 768×t over 64), on which MKL's two threads run only 1.2-1.5× as fast as one
/// (palm-cpu, one layer: the values' gradient 5.9 ms on two threads, 7.8 on one). Independent blocks on one thread
/// each keep both cores busy, and an epilogue's rows are still in that core's cache when it runs.
/// </para>
/// <para>
/// Blocks go to threads by longest-first greedy balancing of their multiply-adds, which depends only on the shapes, so
/// a result is the same bits on every run: each block is the same single-threaded BLAS call whichever thread makes it.
/// </para>
/// </summary>
internal sealed unsafe class CausalBlockProducts : TeamWork
{
    /// <summary>One product: rows [M0, M1) and columns [N0, N1) of batch <paramref name="Batch"/>'s [M, N] result, over
    /// the contracted range [K0, K1).</summary>
    public readonly record struct Item(long Batch, long M0, long M1, long N0, long N1, long K0, long K1)
    {
        public long Cost => (M1 - M0) * (N1 - N0) * Math.Max(1, K1 - K0);
    }

    /// <summary>What the block leaves for zeros: nothing (an epilogue writes whole rows, or a contracted range skips
    /// nothing of the result), the rest of its rows, or the rest of its columns.</summary>
    public enum ZeroFill { None, Columns, Rows }

    private readonly List<Item> _items;
    private readonly float* _x, _y, _c;
    private readonly long _xb, _xr, _xc, _yb, _yr, _yc, _m, _n, _rowInner;
    private readonly ZeroFill _zeros;
    private readonly CausalEpilogue? _epilogue;
    private readonly int[] _owner;

    private CausalBlockProducts(List<Item> items, float* x, long xb, long xr, long xc, float* y, long yb, long yr, long yc,
        float* c, long m, long n, ZeroFill zeros, CausalEpilogue? epilogue, long rowInner, int threads)
    {
        _x = x;
        _y = y;
        _c = c;
        (_items, _xb, _xr, _xc, _yb, _yr, _yc, _m, _n) = (items, xb, xr, xc, yb, yr, yc, m, n);
        (_zeros, _epilogue, _rowInner) = (zeros, epilogue, rowInner);
        _owner = Deal(items, threads);
    }

    /// <summary>
    /// Runs the <paramref name="items"/> (products of [B, M, N] results at <paramref name="c"/>, each batch
    /// <c>M·N</c> after the last; A's element [b, i, p] at <c>x + b·xb + i·xr + p·xc</c>, the second operand's [b, j, p]
    /// likewise) on up to <paramref name="threads"/> of the op's threads.
    /// </summary>
    public static void Run(List<Item> items, float* x, long xb, long xr, long xc, float* y, long yb, long yr, long yc,
        float* c, long m, long n, ZeroFill zeros, CausalEpilogue? epilogue, long rowInner, int threads)
    {
        threads = Math.Clamp(Math.Min(threads, items.Count), 1, 256);
        OpenMpTeam.Run(new CausalBlockProducts(items, x, xb, xr, xc, y, yb, yr, yc, c, m, n, zeros, epilogue, rowInner, threads), threads);
    }

    /// <summary>Each item's thread of <paramref name="threads"/>: longest first, to the least loaded.</summary>
    private static int[] Deal(List<Item> items, int threads)
    {
        var costs = new long[items.Count];
        for (int i = 0; i < costs.Length; i++) costs[i] = items[i].Cost;
        var load = new long[threads];
        var owner = new int[items.Count];
        foreach (var i in StableOrder.Descending(costs))
        {
            int least = 0;
            for (int t = 1; t < threads; t++) if (load[t] < load[least]) least = t;
            owner[i] = least;
            load[least] += items[i].Cost;
        }
        return owner;
    }

    protected override void Run(int worker, int workers)
    {
        using var oneThread = Blas.OneThreadPerCall(workers);
        for (int i = 0; i < _items.Count; i++)
            if (_owner[i] % workers == worker) Product(_items[i]);
    }

    private void Product(Item it)
    {
        var c = _c + it.Batch * _m * _n;
        Blas.Sgemm(it.M1 - it.M0, it.N1 - it.N0, it.K1 - it.K0,
            _x + it.Batch * _xb + it.M0 * _xr + it.K0 * _xc, _xr, _xc,
            _y + it.Batch * _yb + it.N0 * _yr + it.K0 * _yc, _yr, _yc,
            c + it.M0 * _n + it.N0, _n);
        if (_epilogue is not null)
            _epilogue.Rows(_c, it.Batch, _m * _n, it.M0, it.M1, _rowInner, it.N1, _n);
        else if (_zeros == ZeroFill.Columns)
            for (long r = it.M0; r < it.M1; r++)
            {
                Clear(c + r * _n, it.N0);
                Clear(c + r * _n + it.N1, _n - it.N1);
            }
        else if (_zeros == ZeroFill.Rows)
            for (long r = 0; r < _m; r++)
                if (r < it.M0 || r >= it.M1) Clear(c + r * _n + it.N0, it.N1 - it.N0);
    }

    private static void Clear(float* p, long count)
    {
        if (count > 0) new Span<float>(p, checked((int)count)).Clear();
    }
}
