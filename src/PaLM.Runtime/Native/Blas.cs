namespace PaLM.Runtime.Native;

/// <summary>
/// libtorch's own BLAS (MKL's Fortran <c>sgemm_</c>, exported by libtorch_cpu), called directly on strided memory.
/// <para>
/// Why: <c>torch.matmul</c> takes whole tensors and returns a new one, so a product that should fill a block of a larger
/// result (causal attention's blocks, <see cref="Contraction.RunCausal"/>) is computed into a temporary and copied, and
/// a product over a row range of a matrix must first be narrowed into a view it accepts. BLAS itself takes a pointer and
/// a leading dimension per matrix: reading a block where it lies and writing into a block of the result are the same
/// call. The kernels are the ones torch.matmul reaches (MKL with the thread count libtorch set; on its AVX-512 kernels
/// once <see cref="MklDispatch"/> has run), so results agree with it to float rounding.
/// </para>
/// Where libtorch_cpu exports no <c>sgemm_</c> (another BLAS, another OS), <see cref="Available"/> is false and callers
/// keep their torch path.
/// </summary>
internal static unsafe class Blas
{
    private static readonly Lazy<nint> s_sgemm = new(() => TorchCpuExport("sgemm_"));

    // The C entry point: the lower-case names are MKL's Fortran one, which takes a pointer.
    private static readonly Lazy<nint> s_localThreads = new(() => TorchCpuExport("MKL_Set_Num_Threads_Local"));

    /// <summary>The address of <paramref name="name"/> in the loaded libtorch_cpu, or 0.</summary>
    private static nint TorchCpuExport(string name) =>
        LoadedLibraries.TryFind(f => f.StartsWith("libtorch_cpu", StringComparison.Ordinal), out var lib)
        && System.Runtime.InteropServices.NativeLibrary.TryGetExport(lib, name, out var f) ? f : 0;

    /// <summary>
    /// MKL's thread count for calls from this thread (<c>MKL_Set_Num_Threads_Local</c>; 0 goes back to the global
    /// count); returns the previous local count (0: none was set), or -1 where MKL does not export it (nothing changes).
    /// </summary>
    public static int SetLocalThreads(int threads)
    {
        var f = s_localThreads.Value;
        return f == 0 ? -1 : ((delegate* unmanaged<int, int>)f)(threads);
    }

    /// <summary>
    /// MKL held to one thread for the calls this worker makes while the scope lasts, when it is one of several
    /// (<c>using var _ = Blas.OneThreadPerCall(workers);</c>): each call of products dealt to a team's workers runs on its
    /// worker alone, where MKL would otherwise start its own team inside this one (or, on the thread pool, on top of
    /// it). A lone worker keeps MKL's threads.
    /// </summary>
    public static LocalThreadsScope OneThreadPerCall(int workers) => new(workers > 1 ? SetLocalThreads(1) : -1);

    /// <summary>Restores MKL's previous local thread count on dispose (-1: nothing was changed).</summary>
    public readonly struct LocalThreadsScope(int previous) : IDisposable
    {
        public void Dispose()
        {
            if (previous >= 0) SetLocalThreads(previous);
        }
    }

    /// <summary><paramref name="m"/> ([B, R, C]) as it is when <see cref="Sgemm"/> can read each matrix in place
    /// (<see cref="Readable"/>), else a contiguous copy.</summary>
    public static TorchSharp.torch.Tensor InPlaceOrCopy(TorchSharp.torch.Tensor m) =>
        Readable(m.size(1), m.size(2), m.stride(1), m.stride(2)) ? m : m.contiguous();

    /// <summary>Whether <see cref="Sgemm"/> can run (libtorch_cpu is loaded and exports the Fortran sgemm).</summary>
    public static bool Available => s_sgemm.Value != 0;

    /// <summary>
    /// C[i, j] = Σ_p A[i, p] · Y[j, p] (i &lt; m, j &lt; n, p &lt; k), with beta = 0 (C is overwritten). A's element
    /// [i, p] lies at <c>a + i·aRow + p·aCol</c>, Y's [j, p] at <c>y + j·yRow + p·yCol</c>; C is row-major with leading
    /// dimension <paramref name="ldc"/>. Each of A and Y needs a unit stride in one of its two dims
    /// (<see cref="Readable"/>). Y is the second operand transposed, as both of a contraction's operands list their
    /// contracted dims last.
    /// </summary>
    public static void Sgemm(long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc)
    {
        if (m == 0 || n == 0) return;
        if (k == 0)
        {
            for (long i = 0; i < m; i++) new Span<float>(c + i * ldc, checked((int)n)).Clear();
            return;
        }
        // Row-major C (m×n) is column-major Cᵀ (n×m) = Y (n×k) · Aᵀ (k×m), each read in column-major terms.
        var (opY, ldy) = ColumnMajor(n, k, yRow, yCol);
        var (opA, lda) = ColumnMajor(k, m, aCol, aRow);
        int M = checked((int)n), N = checked((int)m), K = checked((int)k), LDA = checked((int)ldy), LDB = checked((int)lda), LDC = checked((int)Math.Max(ldc, n));
        float alpha = 1, beta = 0;
        ((delegate* unmanaged<byte*, byte*, int*, int*, int*, float*, float*, int*, float*, int*, float*, float*, int*, void>)s_sgemm.Value)(
            &opY, &opA, &M, &N, &K, &alpha, y, &LDA, a, &LDB, &beta, c, &LDC);
    }

    // MKL's packed GEMM (C entry points, 32-bit MKL_INT as libtorch links it): one operand laid out once in the kernels'
    // own blocked format, then any number of products from it.
    private static readonly Lazy<nint> s_packSize = new(() => TorchCpuExport("cblas_sgemm_pack_get_size"));
    private static readonly Lazy<nint> s_pack = new(() => TorchCpuExport("cblas_sgemm_pack"));
    private static readonly Lazy<nint> s_compute = new(() => TorchCpuExport("cblas_sgemm_compute"));

    private const int CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112, CblasPacked = 151, CblasAMatrix = 161, CblasBMatrix = 162;

    /// <summary>Whether libtorch_cpu exports MKL's packed GEMM (<see cref="Pack"/>, <see cref="Compute"/>).</summary>
    public static bool PackAvailable => s_packSize.Value != 0 && s_pack.Value != 0 && s_compute.Value != 0;

    /// <summary>Bytes <see cref="Pack"/> writes for the first operand (<paramref name="first"/>) or the second of an
    /// m×k · k×n product.</summary>
    public static long PackedBytes(bool first, long m, long n, long k) =>
        (long)((delegate* unmanaged<int, int, int, int, nuint>)s_packSize.Value)(first ? CblasAMatrix : CblasBMatrix,
            checked((int)m), checked((int)n), checked((int)k));

    /// <summary>
    /// Packs one operand of <see cref="Sgemm"/>'s product (the same pointer and strides: A's [i, p] at
    /// <c>a + i·aRow + p·aCol</c> when <paramref name="first"/>, else Y's [j, p]) into <paramref name="dest"/>
    /// (<see cref="PackedBytes"/> of them), on MKL's threads.
    /// </summary>
    public static void Pack(bool first, long m, long n, long k, float* src, long row, long col, float* dest)
    {
        // Row-major terms: A is m×k; B (k×n) is Y transposed, so B's row stride is Y's column stride.
        var (op, ld) = first ? RowMajor(m, k, row, col) : RowMajor(k, n, col, row);
        ((delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, void>)s_pack.Value)(
            CblasRowMajor, first ? CblasAMatrix : CblasBMatrix, op, checked((int)m), checked((int)n), checked((int)k), 1f, src, checked((int)ld), dest);
    }

    /// <summary>
    /// <see cref="Sgemm"/>'s product with one operand already packed by <see cref="Pack"/>: <paramref name="packedFirst"/>
    /// says which, and the other is read where it lies (its pointer and strides as <see cref="Sgemm"/> takes them; the
    /// packed one's are ignored). m, n and k may be a piece of the packed product's along the packed operand's uncut
    /// dim: rows of the result for a packed second operand, columns for a packed first one.
    /// </summary>
    public static void Compute(bool packedFirst, long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc)
    {
        if (m == 0 || n == 0) return;
        var (opA, lda) = packedFirst ? (CblasPacked, 1L) : RowMajor(m, k, aRow, aCol);
        var (opB, ldb) = packedFirst ? RowMajor(k, n, yCol, yRow) : (CblasPacked, 1L);
        ((delegate* unmanaged<int, int, int, int, int, int, float*, int, float*, int, float, float*, int, void>)s_compute.Value)(
            CblasRowMajor, opA, opB, checked((int)m), checked((int)n), checked((int)k), a, checked((int)lda), y, checked((int)ldb),
            0f, c, checked((int)Math.Max(ldc, n)));
    }

    /// <summary>How CBLAS reads an r×c operand row-major: as stored (no transpose, leading dimension rowStride) or as the
    /// transpose of a row-major c×r (leading dimension colStride).</summary>
    private static (int Op, long Ld) RowMajor(long rows, long cols, long rowStride, long colStride)
    {
        if (colStride == 1 || cols == 1) return (CblasNoTrans, Math.Max(rows == 1 ? cols : rowStride, Math.Max(1, cols)));
        return (CblasTrans, Math.Max(colStride, Math.Max(1, rows)));
    }

    /// <summary>
    /// How BLAS reads an r×c operand whose [i, j] lies at i·rowStride + j·colStride: as stored column-major ('N',
    /// leading dimension colStride) or as the transpose of a column-major c×r ('T', leading dimension rowStride).
    /// A dim of size 1 has no stride to speak of; the leading dimension is raised to the minimum BLAS checks.
    /// </summary>
    private static (byte Op, long Ld) ColumnMajor(long rows, long cols, long rowStride, long colStride)
    {
        if (rowStride == 1 || rows == 1) return ((byte)'N', Math.Max(cols == 1 ? rows : colStride, Math.Max(1, rows)));
        return ((byte)'T', Math.Max(rows == 1 ? cols : rowStride, Math.Max(1, cols)));
    }

    /// <summary>Whether an r×c operand with these strides can be handed to <see cref="Sgemm"/> as it lies: one dim of unit
    /// stride (or size 1) and the other's stride at least the first one's extent (no overlapping rows, no broadcast).</summary>
    public static bool Readable(long rows, long cols, long rowStride, long colStride) =>
        (rowStride == 1 || rows == 1) && (cols == 1 || colStride >= Math.Max(1, rows))
        || (colStride == 1 || cols == 1) && (rows == 1 || rowStride >= Math.Max(1, cols));
}
