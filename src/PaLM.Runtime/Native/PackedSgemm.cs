using System.Runtime.InteropServices;

namespace PaLM.Runtime.Native;

/// <summary>
/// <see cref="DealtSgemm"/>'s pieces with the operand they share packed once: the operand every piece reads whole (the
/// second when the result's rows are cut, the first when its columns are) is laid out in MKL's blocked format by
/// <see cref="Blas.Pack"/> on MKL's threads, then each of the team's workers computes its piece from it
/// (<see cref="Blas.Compute"/>, MKL held to one thread).
/// <para>
/// Why: a dealt piece is a whole sgemm call, and each packs its own copy of the shared operand, on one thread. On
/// palm-cpu's projections (2026-12-06, scratch harness, best of 12, alternating) packing the input projection's
/// 768×7040 weight once took 0.9 ms on two threads, and its input gradient 2048×7040·7040×768 ran in 56.5 ms packed
/// and computed against 58.1 dealt and 58.3 on MKL's threads; the other shapes read within about 1 ms either way, so
/// which kernel runs a shape stays the tuner's measurement.
/// </para>
/// <para>
/// As with the dealt kernel, the pieces depend only on the shape and the thread count, and the packing is one call, so
/// the result's bits do not depend on scheduling.
/// </para>
/// </summary>
internal sealed unsafe class PackedSgemm : TeamWork
{
    private readonly long _m, _n, _k, _aRow, _aCol, _yRow, _yCol, _ldc;
    private readonly float* _a, _y, _c;
    private readonly bool _rows;
    private readonly int _pieces;

    private PackedSgemm(long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc,
        int pieces, bool rows)
    {
        (_m, _n, _k, _aRow, _aCol, _yRow, _yCol, _ldc, _pieces, _rows) = (m, n, k, aRow, aCol, yRow, yCol, ldc, pieces, rows);
        _a = a;
        _y = y;
        _c = c;
    }

    /// <summary>Whether the packed kernel can run a product of this shape: MKL's packed GEMM is exported and the dims
    /// fit its 32-bit integers.</summary>
    public static bool Applies(long m, long n, long k) => Blas.PackAvailable && Math.Max(m, Math.Max(n, k)) <= int.MaxValue;

    /// <summary><see cref="Blas.Sgemm"/>'s product (same arguments) on <paramref name="threads"/> of the team's workers,
    /// one piece each, from one packing of the operand they share; plain <see cref="Blas.Sgemm"/> where it does not
    /// apply (<see cref="Applies"/>, or k = 0).</summary>
    public static void Run(long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc, int threads)
    {
        if (m == 0 || n == 0) return;
        if (k == 0 || !Applies(m, n, k))
        {
            Blas.Sgemm(m, n, k, a, aRow, aCol, y, yRow, yCol, c, ldc);
            return;
        }
        bool rows = m >= n;
        int pieces = (int)Math.Clamp(Math.Min(threads, Math.Max(m, n)), 1, 256);
        // Cutting the rows shares the second operand; cutting the columns, the first.
        bool packFirst = !rows;
        var packed = PackBuffer(Blas.PackedBytes(packFirst, m, n, k));
        if (packFirst) Blas.Pack(true, m, n, k, a, aRow, aCol, packed);
        else Blas.Pack(false, m, n, k, y, yRow, yCol, packed);
        float* pa = packFirst ? packed : a, py = packFirst ? y : packed;
        if (pieces == 1) Blas.Compute(packFirst, m, n, k, pa, aRow, aCol, py, yRow, yCol, c, ldc);
        else OpenMpTeam.Run(new PackedSgemm(m, n, k, pa, aRow, aCol, py, yRow, yCol, c, ldc, pieces, rows), pieces);
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

    protected override void Run(int worker, int workers)
    {
        using var oneThread = Blas.OneThreadPerCall(workers);
        for (int p = worker; p < _pieces; p += workers)
        {
            if (_rows)
            {
                long lo = _m * p / _pieces, hi = _m * (p + 1) / _pieces;
                Blas.Compute(false, hi - lo, _n, _k, _a + lo * _aRow, _aRow, _aCol, _y, _yRow, _yCol, _c + lo * _ldc, _ldc);
            }
            else
            {
                long lo = _n * p / _pieces, hi = _n * (p + 1) / _pieces;
                Blas.Compute(true, _m, hi - lo, _k, _a, _aRow, _aCol, _y + lo * _yRow, _yRow, _yCol, _c + lo, _ldc);
            }
        }
    }
}
