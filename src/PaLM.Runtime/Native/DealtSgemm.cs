namespace PaLM.Runtime.Native;

/// <summary>
/// One large product as single-threaded BLAS calls, one per thread: the longer of the result's two dims is cut into as
/// many contiguous pieces as there are threads, and each of the team's workers computes its piece with MKL held to one
/// thread (<see cref="Blas.SetLocalThreads"/>).
/// <para>
/// Why: MKL's own threading of an sgemm whose result has a short side loses more than its two threads share out. On
/// palm-cpu's projections (2 cores, 2026-12-06, scratch harness, median of 20, alternating), the output projection
/// 2048×3840·3840×768 ran at 388 GFLOP/s cut into two row halves against 375 on MKL's threads, its weight gradient
/// 3840×2048·2048×768 at 387 against 373, and the input projection's weight gradient 768×2048·2048×7040 at 395 cut
/// into column halves against 370; the other shapes read the same either way. Each piece packs its own copy of the
/// uncut operand, which costs less than MKL's synchronization between its threads' blocks.
/// </para>
/// <para>
/// The pieces depend only on the shape and the thread count, and each is the same single-threaded call whichever worker
/// makes it, so the result's bits do not depend on scheduling.
/// </para>
/// </summary>
internal sealed unsafe class DealtSgemm : TeamWork
{
    private readonly long _m, _n, _k, _aRow, _aCol, _yRow, _yCol, _ldc;
    private readonly float* _a, _y, _c;
    private readonly bool _rows;
    private readonly int _pieces;

    private DealtSgemm(long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc, int pieces)
    {
        (_m, _n, _k, _aRow, _aCol, _yRow, _yCol, _ldc, _pieces) = (m, n, k, aRow, aCol, yRow, yCol, ldc, pieces);
        _a = a;
        _y = y;
        _c = c;
        _rows = m >= n;
    }

    /// <summary><see cref="Blas.Sgemm"/>'s product (same arguments) on <paramref name="threads"/> of the team's
    /// workers, one piece each.</summary>
    public static void Run(long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc, int threads)
    {
        int pieces = (int)Math.Clamp(Math.Min(threads, Math.Max(m, n)), 1, 256);
        if (pieces == 1)
        {
            Blas.Sgemm(m, n, k, a, aRow, aCol, y, yRow, yCol, c, ldc);
            return;
        }
        OpenMpTeam.Run(new DealtSgemm(m, n, k, a, aRow, aCol, y, yRow, yCol, c, ldc, pieces), pieces);
    }

    protected override void Run(int worker, int workers)
    {
        using var oneThread = Blas.OneThreadPerCall(workers);
        for (int p = worker; p < _pieces; p += workers)
        {
            if (_rows)
            {
                long lo = _m * p / _pieces, hi = _m * (p + 1) / _pieces;
                Blas.Sgemm(hi - lo, _n, _k, _a + lo * _aRow, _aRow, _aCol, _y, _yRow, _yCol, _c + lo * _ldc, _ldc);
            }
            else
            {
                long lo = _n * p / _pieces, hi = _n * (p + 1) / _pieces;
                Blas.Sgemm(_m, hi - lo, _k, _a, _aRow, _aCol, _y + lo * _yRow, _yRow, _yCol, _c + lo, _ldc);
            }
        }
    }
}
