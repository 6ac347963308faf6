using System.Runtime.InteropServices;

namespace PaLM.Runtime.Native;

/// <summary>
/// One large product as single-threaded BLAS calls, one per thread: the longer of the result's two dims is cut into as
/// many contiguous pieces as there are threads, and each of the team's workers computes its piece with MKL held to one
/// thread (<see cref="Blas.SetLocalThreads"/>). <see cref="RunPacked"/> computes the same pieces from one packing of
/// the operand they share.
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
    private readonly bool _rows, _packed;
    private readonly int _pieces;

    private DealtSgemm(long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc,
        int pieces, bool packed)
    {
        (_m, _n, _k, _aRow, _aCol, _yRow, _yCol, _ldc, _pieces, _packed) = (m, n, k, aRow, aCol, yRow, yCol, ldc, pieces, packed);
        _a = a;
        _y = y;
        _c = c;
        _rows = m >= n;
    }

    private static int Pieces(long m, long n, int threads) => (int)Math.Clamp(Math.Min(threads, Math.Max(m, n)), 1, 256);

    /// <summary><see cref="Blas.Sgemm"/>'s product (same arguments) on <paramref name="threads"/> of the team's
    /// workers, one piece each.</summary>
    public static void Run(long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc, int threads)
    {
        int pieces = Pieces(m, n, threads);
        if (pieces == 1)
        {
            Blas.Sgemm(m, n, k, a, aRow, aCol, y, yRow, yCol, c, ldc);
            return;
        }
        OpenMpTeam.Run(new DealtSgemm(m, n, k, a, aRow, aCol, y, yRow, yCol, c, ldc, pieces, packed: false), pieces);
    }

    /// <summary>Whether <see cref="RunPacked"/> can run a product of this shape: MKL's packed GEMM is exported and the
    /// dims fit its 32-bit integers.</summary>
    private static bool PackedApplies(long m, long n, long k) => Blas.PackAvailable && Math.Max(m, Math.Max(n, k)) <= int.MaxValue;

    /// <summary>
    /// <c>Run</c>'s pieces with the operand they share packed once: the operand every piece reads whole (the
    /// second when the result's rows are cut, the first when its columns are) is laid out in MKL's blocked format by
    /// <see cref="Blas.Pack"/> on MKL's threads, then each worker computes its piece from it (<see cref="Blas.Compute"/>,
    /// MKL held to one thread). Plain <see cref="Blas.Sgemm"/> where it does not apply (<see cref="PackedApplies"/>, or
    /// k = 0).
    /// <para>
    /// Why: a dealt piece is a whole sgemm call, and each packs its own copy of the shared operand, on one thread. On
    /// palm-cpu's projections (2026-12-06, scratch harness, 30 calls each, alternating) the input projection's input
    /// gradient 2048×7040·7040×768 ran in 60.4 ms packed against 61.8 dealt, faster in 25 of 30 calls; three other
    /// shapes were slower, so which kernel runs a shape stays the tuner's measurement. The packing is one call and the
    /// pieces are <c>Run</c>'s, so the bits do not depend on scheduling either.
    /// </para>
    /// </summary>
    public static void RunPacked(long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc, int threads)
    {
        if (m == 0 || n == 0) return;
        if (k == 0 || !PackedApplies(m, n, k))
        {
            Blas.Sgemm(m, n, k, a, aRow, aCol, y, yRow, yCol, c, ldc);
            return;
        }
        int pieces = Pieces(m, n, threads);
        // Cutting the rows shares the second operand; cutting the columns, the first.
        bool packFirst = m < n;
        var packed = PackBuffer(Blas.PackedBytes(packFirst, m, n, k));
        if (packFirst) Blas.Pack(true, m, n, k, a, aRow, aCol, packed);
        else Blas.Pack(false, m, n, k, y, yRow, yCol, packed);
        float* pa = packFirst ? packed : a, py = packFirst ? y : packed;
        if (pieces == 1) Blas.Compute(packFirst, m, n, k, pa, aRow, aCol, py, yRow, yCol, c, ldc);
        else OpenMpTeam.Run(new DealtSgemm(m, n, k, pa, aRow, aCol, py, yRow, yCol, c, ldc, pieces, packed: true), pieces);
    }

    protected override void Run(int worker, int workers)
    {
        using var oneThread = Blas.OneThreadPerCall(workers);
        for (int p = worker; p < _pieces; p += workers)
        {
            // With a packed operand, the packed one's pointer and strides pass through unused.
            if (_rows)
            {
                long lo = _m * p / _pieces, hi = _m * (p + 1) / _pieces;
                float* a = _a + lo * _aRow, c = _c + lo * _ldc;
                if (_packed) Blas.Compute(false, hi - lo, _n, _k, a, _aRow, _aCol, _y, _yRow, _yCol, c, _ldc);
                else Blas.Sgemm(hi - lo, _n, _k, a, _aRow, _aCol, _y, _yRow, _yCol, c, _ldc);
            }
            else
            {
                long lo = _n * p / _pieces, hi = _n * (p + 1) / _pieces;
                float* y = _y + lo * _yRow, c = _c + lo;
                if (_packed) Blas.Compute(true, _m, hi - lo, _k, _a, _aRow, _aCol, y, _yRow, _yCol, c, _ldc);
                else Blas.Sgemm(_m, hi - lo, _k, _a, _aRow, _aCol, y, _yRow, _yCol, c, _ldc);
            }
        }
    }

    // The calling thread's pack buffer, grown to the largest packing it has made and kept: a fresh 21 MB block per call
    // (palm-cpu's input-projection weight) is new pages to fault in each time, which cost the product 5–9% in a scratch
    // harness. One per thread, since in-process devices multiply on their own threads at once. (MKL keeps its own
    // packing buffers the same way.)
    [ThreadStatic] private static PackMemory? t_buffer;

    private static float* PackBuffer(long bytes)
    {
        var buffer = t_buffer ??= new PackMemory();
        if (buffer.Bytes < bytes)
        {
            buffer.Free();
            buffer.Pointer = (float*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
            buffer.Bytes = bytes;
        }
        return buffer.Pointer;
    }

    /// <summary>Native memory owned by one thread, freed when the thread's object is collected.</summary>
    private sealed class PackMemory
    {
        public float* Pointer;
        public long Bytes;

        public void Free()
        {
            if (Pointer != null) NativeMemory.AlignedFree(Pointer);
            Pointer = null;
            Bytes = 0;
        }

        ~PackMemory() => Free();
    }
}
