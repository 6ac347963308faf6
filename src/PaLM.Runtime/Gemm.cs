using System.Collections.Concurrent;
using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>A matmul kernel the runtime can run a product on.</summary>
public enum GemmKernel
{
    /// <summary><c>torch.matmul</c>: libtorch's BLAS (MKL's sgemm on x86).</summary>
    Blas,

    /// <summary>
    /// The same product as a 1×1 convolution, which libtorch runs through oneDNN: C[M, N] is the convolution of the input
    /// B as [1, K, N, 1] (K channels, N positions) with the weight A as [M, K, 1, 1], so the output [1, M, N, 1] is C in
    /// row-major order, the layout BLAS returns.
    /// </summary>
    OneDnn,

    /// <summary>
    /// BLAS with the product cut into one piece per thread along the longer of the result's dims, each piece a
    /// single-threaded call on its own worker of libtorch's OpenMP team (<see cref="Native.DealtSgemm"/>): the same MKL
    /// kernels without MKL's synchronization between its threads.
    /// </summary>
    Dealt,

    /// <summary>
    /// <see cref="Dealt"/>'s pieces with the operand they share packed once in MKL's blocked format
    /// (<see cref="Native.DealtSgemm.RunPacked"/>) instead of by every piece's own call.
    /// </summary>
    Packed,
}

/// <summary>
/// Chooses the matmul kernel per product by measuring it, as XLA and TorchInductor autotune GEMMs (and as
/// <c>torch.backends.cudnn.benchmark</c> picks convolution algorithms): the first time a large fp32 product signature is
/// seen, every <see cref="GemmKernel"/> runs it back to back on its operands (a warm-up call each, then
/// <see cref="TrialsPerKernel"/> timed calls each, alternating), and the one whose fastest call was fastest runs that
/// signature from then on. A product written into a given destination (a slice of a larger result,
/// <see cref="Into"/>) is tuned the same way between the kernels that can write there: BLAS, dealt and packed BLAS.
/// <para>
/// Why: which kernel wins depends on the shape, the operands' layouts and the CPU, so it is measured rather than decided
/// by a rule. On this machine (AMD EPYC, Zen 5, AVX-512), with MKL left to its vendor check, MKL's sgemm takes its AVX2
/// path and tops out near 190 GFLOP/s while oneDNN's AVX-512 convolution kernels run palm-cpu's projections at 306-355
/// GFLOP/s; with the check answered (<see cref="Native.MklDispatch"/>, the default) MKL runs them at 390-420 and the
/// tuner keeps BLAS for all of them. Batched attention products were slower through oneDNN even against MKL's AVX2
/// kernels (26-48 ms vs 10, 2026-12-04). Whether MKL's own threads or one piece per thread runs a shape faster is
/// as much a measurement: on the same machine the pieces won by 3-5% where the result has a short side and lost or tied
/// elsewhere (<see cref="Native.DealtSgemm"/>).
/// The fastest call decides, not the median: in a step's first calls, buffers' first touches page-fault (about 80 ms
/// for 56 MB on this VM) on either kernel at random.
/// </para>
/// <para>
/// Every device of the process gets the same kernel for a signature from its first call: the first caller measures
/// under the signature's lock while the others wait for its choice, so replicated computations stay bitwise equal
/// across in-process devices. MPI ranks would each measure their own, so tuning is off under MPI
/// (<see cref="TuningAllowed"/>; the backend turns it off) unless <c>PALMC_GEMM=onednn</c> fixes the kernel for all.
/// The kernels agree to float rounding, not bit for bit, and a choice is made per process: two tuned runs (or a run and
/// its resumption) are bitwise equal only when they choose alike; <c>PALMC_GEMM=blas</c> (BLAS everywhere, no tuning)
/// or <c>PALMC_GEMM=onednn</c> (the convolution wherever it applies) make runs reproducible bit for bit.
/// Products below <see cref="MinFlops"/>, operands broadcast over the batch and other dtypes always use BLAS.
/// </para>
/// <para>
/// With a <see cref="Store"/> (the CLI sets palmc's cache; see PaLM.Perf.GemmTuningCache) choices outlive the process,
/// as XLA's autotuning results can: a signature measured before on this machine, with this BLAS, kernel list and
/// thread count, runs its stored kernel from its first call, without trial calls. That takes the trials (about 6 s of
/// palm-cpu's first step) out of every later run, and makes two runs on one machine (or a run and its resumption)
/// choose alike. <c>PALMC_GEMM=retune</c> measures every signature again and stores the new choices.
/// </para>
/// </summary>
public static class Gemm
{
    /// <summary>Products of fewer FLOPs than this (2·B·M·K·N) are not tuned: the timing noise and the reorders oneDNN
    /// adds outweigh any gain.</summary>
    public const double MinFlops = 5e8;

    /// <summary>Untimed calls per kernel before the timed ones: the first builds oneDNN's primitive (JIT) and
    /// first-touches its buffers.</summary>
    public const int WarmupCallsPerKernel = 1;

    /// <summary>Timed calls per kernel, after its warm-up calls, that the choice is made on.</summary>
    public const int TrialsPerKernel = 3;

    private enum Mode { Tune, Retune, Blas, OneDnn }

    /// <summary>Every kernel, in the order tuning tries them (and ties go to the first).</summary>
    private static readonly GemmKernel[] s_all = Enum.GetValues<GemmKernel>();

    /// <summary>The kernels that write a product into a given destination: oneDNN returns a new tensor.</summary>
    private static readonly GemmKernel[] s_into = [GemmKernel.Blas, GemmKernel.Dealt, GemmKernel.Packed];

    private static readonly Mode s_mode = Environment.GetEnvironmentVariable("PALMC_GEMM")?.Trim().ToLowerInvariant() switch
    {
        "blas" or "mkl" => Mode.Blas,
        "onednn" => Mode.OneDnn,
        "retune" => Mode.Retune,
        _ => Mode.Tune,
    };

    private static bool Tuned => s_mode is Mode.Tune or Mode.Retune;

    /// <summary>
    /// Where choices are kept between processes (null, the default: each process measures its own). Read when a
    /// signature is first seen (a stored choice is taken only if its kernel is one this product may run on) and written
    /// after each new measurement. Not consulted where tuning is off (<see cref="TuningAllowed"/>), nor for reading under
    /// <c>PALMC_GEMM=retune</c>. Set it before the first product: signatures already seen keep their choice.
    /// </summary>
    public static IGemmTuningStore? Store { get; set; }

    private static volatile bool s_tuningAllowed = true;

    /// <summary>
    /// Whether products may be tuned in this process (default true). The MPI backend sets it to false: ranks measuring
    /// apart could choose differently and their replicated computations drift apart by float rounding. Untuned products
    /// run on BLAS, or on oneDNN under <c>PALMC_GEMM=onednn</c>.
    /// </summary>
    public static bool TuningAllowed { get => s_tuningAllowed; set => s_tuningAllowed = value; }

    private static readonly ConcurrentDictionary<Signature, Tuning> s_tunings = new();

    /// <summary>The kernels this process may run fp32 products on: what a peak measurement "through the same kernels"
    /// must time.</summary>
    public static IReadOnlyList<GemmKernel> Kernels => s_mode switch
    {
        Mode.Blas => [GemmKernel.Blas],
        Mode.Tune or Mode.Retune when !TuningAllowed => [GemmKernel.Blas],
        Mode.OneDnn => [GemmKernel.Blas, GemmKernel.OneDnn],
        _ => s_all,
    };

    /// <summary>A product's shape and operand layouts: what a kernel's speed depends on (an operand that is not
    /// contiguous is copied before oneDNN reads it), and whether it is written into a given destination.</summary>
    private readonly record struct Signature(long Batch, long M, long K, long N, bool ARowMajor, bool BRowMajor, bool AContiguous, bool BContiguous, bool Into)
    {
        /// <summary>The signature as a <see cref="Store"/> keys it, with the thread count it is measured on:
        /// "1x2048x768x7040 row,col-strided into t2".</summary>
        public string Key(int threads) => string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"{Batch}x{M}x{K}x{N} {LayoutName(ARowMajor, AContiguous)},{LayoutName(BRowMajor, BContiguous)}{(Into ? " into" : "")} t{threads}");
    }

    /// <summary>A signature's measurement (or its stored one), its choice and how often each kernel ran it since.</summary>
    private sealed class Tuning(Signature signature)
    {
        private readonly double[] _best = [.. s_all.Select(_ => double.PositiveInfinity)];
        private readonly long[] _runs = new long[s_all.Length];
        private GemmKernel? _chosen;
        private DateTimeOffset? _storedAt;
        private bool _storeRead;

        /// <summary>The kernel chosen (measured, or stored for this signature and one of <paramref name="candidates"/>),
        /// counting this call on it; false while none is (the caller then <see cref="Choose"/>s, building its trial calls
        /// only then: a closure per call would be garbage on every product).</summary>
        public bool TryChosen(GemmKernel[] candidates, out GemmKernel kernel)
        {
            lock (this)
            {
                if (_chosen is null && !_storeRead) ReadStore(candidates);
                kernel = _chosen.GetValueOrDefault();
                if (_chosen is null) return false;
                _runs[(int)kernel]++;
                return true;
            }
        }

        private void ReadStore(GemmKernel[] candidates)
        {
            _storeRead = true;
            if (s_mode == Mode.Retune || Store?.TryGet(signature.Key(torch.get_num_threads())) is not { } stored
                || Array.IndexOf(candidates, stored.Kernel) < 0) return;
            _chosen = stored.Kernel;
            _storedAt = stored.MeasuredAt;
            foreach (var (k, seconds) in stored.BestSeconds) _best[(int)k] = seconds;
        }

        /// <summary>The kernel for this call among <paramref name="candidates"/>: each timed through
        /// <paramref name="call"/> by the first caller, under the lock, so every device waits for and gets the same
        /// choice.</summary>
        public GemmKernel Choose(GemmKernel[] candidates, Action<GemmKernel> call)
        {
            lock (this)
            {
                if (_chosen is null)
                {
                    for (int round = 0; round < WarmupCallsPerKernel + TrialsPerKernel; round++)
                        foreach (var k in candidates)
                        {
                            var sw = Stopwatch.StartNew();
                            call(k);
                            if (round >= WarmupCallsPerKernel) _best[(int)k] = Math.Min(_best[(int)k], sw.Elapsed.TotalSeconds);
                        }
                    var chosen = candidates[0];
                    foreach (var k in candidates) if (_best[(int)k] < _best[(int)chosen]) chosen = k;
                    _chosen = chosen;
                    Store?.Put(signature.Key(torch.get_num_threads()), new StoredGemmChoice(chosen,
                        candidates.ToDictionary(k => k, k => _best[(int)k]), DateTimeOffset.UtcNow));
                }
                _runs[(int)_chosen.Value]++;
                return _chosen.Value;
            }
        }

        public Choice Report(Signature s)
        {
            lock (this)
                return new Choice(s.Batch, s.M, s.K, s.N, s.ARowMajor, s.BRowMajor, s.AContiguous, s.BContiguous, s.Into, _chosen,
                    s_all.Where(k => double.IsFinite(_best[(int)k])).ToDictionary(k => k, k => _best[(int)k]),
                    s_all.ToDictionary(k => k, k => _runs[(int)k]), _storedAt);
        }
    }

    /// <summary>A tuned product: its shape, whether it was written into a given destination, the kernel chosen, each
    /// measured kernel's fastest timed call, how many calls each kernel has run since (the tuning's own calls not
    /// counted), and when the choice was measured if it came from the <see cref="Store"/> (null: in this process).</summary>
    public sealed record Choice(long Batch, long M, long K, long N, bool ARowMajor, bool BRowMajor, bool AContiguous, bool BContiguous,
        bool Into, GemmKernel? Kernel, IReadOnlyDictionary<GemmKernel, double> BestSeconds, IReadOnlyDictionary<GemmKernel, long> Calls,
        DateTimeOffset? StoredAt = null)
    {
        /// <summary>Calls since the choice, on every kernel.</summary>
        public long TotalCalls => Calls.Values.Sum();
    }

    /// <summary>Every product tuned in this process so far (for reports and tests).</summary>
    public static IReadOnlyList<Choice> Choices =>
        [.. s_tunings.Select(p => p.Value.Report(p.Key)).OrderByDescending(c => c.Batch * c.M * c.K * c.N)];

    /// <summary>[B, M, K] · [B, K, N] → [B, M, N] (any strides), on the kernel chosen for its signature.</summary>
    public static Tensor Matmul(Tensor a, Tensor b)
    {
        if (s_mode == Mode.Blas || !Applies(a, b)) return torch.matmul(a, b);
        if (s_mode == Mode.OneDnn) return Run(GemmKernel.OneDnn, a, b);
        if (!TuningAllowed) return torch.matmul(a, b);
        var tuning = s_tunings.GetOrAdd(SignatureOf(a, b), s => new Tuning(s));
        return Run(tuning.TryChosen(s_all, out var kernel) ? kernel : Measure(tuning, a, b), a, b);
    }

    private static GemmKernel Measure(Tuning tuning, Tensor a, Tensor b) => tuning.Choose(s_all, k =>
    {
        using var c = Run(k, a, b);
    });

    /// <summary>
    /// <see cref="Native.Blas.Sgemm"/>'s product (the same arguments: C row-major with leading dimension
    /// <paramref name="ldc"/>, overwritten) on the kernel tuned for its signature among those that write into a given
    /// destination: BLAS on MKL's threads, dealt (<see cref="GemmKernel.Dealt"/>) or packed (<see cref="GemmKernel.Packed"/>). Products below
    /// <see cref="MinFlops"/>, untuned processes and <c>PALMC_GEMM</c>'s fixed modes use BLAS. The caller keeps the
    /// memory alive.
    /// </summary>
    internal static unsafe void Into(long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc)
    {
        var kernel = GemmKernel.Blas;
        if (Tuned && TuningAllowed && 2.0 * m * n * k >= MinFlops)
        {
            // B [k, n] is Y transposed: B[p, j] = Y[j, p], so B is row-major where Y's rows are its unit stride.
            var signature = new Signature(1, m, k, n, ARowMajor: aCol == 1, BRowMajor: yRow == 1,
                AContiguous: aCol == 1 ? aRow == k : aRow == 1 && aCol == m, BContiguous: yRow == 1 ? yCol == n : yCol == 1 && yRow == k, Into: true);
            var tuning = s_tunings.GetOrAdd(signature, s => new Tuning(s));
            if (!tuning.TryChosen(s_into, out kernel)) kernel = MeasureInto(tuning, m, n, k, (nint)a, aRow, aCol, (nint)y, yRow, yCol, (nint)c, ldc);
        }
        RunInto(kernel, m, n, k, a, aRow, aCol, y, yRow, yCol, c, ldc);
    }

    private static unsafe GemmKernel MeasureInto(Tuning tuning, long m, long n, long k, nint a, long aRow, long aCol, nint y, long yRow, long yCol, nint c, long ldc) =>
        tuning.Choose(s_into, kernel => RunInto(kernel, m, n, k, (float*)a, aRow, aCol, (float*)y, yRow, yCol, (float*)c, ldc));

    private static unsafe void RunInto(GemmKernel kernel, long m, long n, long k, float* a, long aRow, long aCol, float* y, long yRow, long yCol, float* c, long ldc)
    {
        if (kernel == GemmKernel.Dealt) Native.DealtSgemm.Run(m, n, k, a, aRow, aCol, y, yRow, yCol, c, ldc, torch.get_num_threads());
        else if (kernel == GemmKernel.Packed) Native.DealtSgemm.RunPacked(m, n, k, a, aRow, aCol, y, yRow, yCol, c, ldc, torch.get_num_threads());
        else Native.Blas.Sgemm(m, n, k, a, aRow, aCol, y, yRow, yCol, c, ldc);
    }

    /// <summary>
    /// C = A·B on <paramref name="kernel"/>, for matrices (A [M, K], B [K, N]) or batches of them (A [B, M, K],
    /// B [B, K, N]); C is a new row-major tensor either way. oneDNN runs a batch as one grouped convolution, a group per
    /// matrix: input [1, B·K, N, 1], weight [B·M, K, 1, 1], output [1, B·M, N, 1] = C as [B, M, N].
    /// </summary>
    public static Tensor Run(GemmKernel kernel, Tensor a, Tensor b)
    {
        if (kernel == GemmKernel.Blas || a.numel() == 0 || b.numel() == 0) return torch.matmul(a, b);
        if (kernel is GemmKernel.Dealt or GemmKernel.Packed) return RunPieces(kernel, a, b);
        var batched = a.dim() == 3;
        long g = batched ? a.size(0) : 1, m = a.size(-2), k = a.size(-1), n = b.size(-1);
        // oneDNN reads plain NCHW tensors in place and reorders them to its blocked formats itself; other strides
        // would take libtorch's channels-last path, measured 2-3x slower, so a strided operand is copied first.
        using var scope = NewDisposeScope();
        var weight = (a.is_contiguous() ? a : a.contiguous()).view(g * m, k, 1, 1);
        var input = (b.is_contiguous() ? b : b.contiguous()).view(1, g * k, n, 1);
        var c = nn.functional.conv2d(input, weight, groups: g);
        return (batched ? c.reshape(g, m, n) : c.reshape(m, n)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <see cref="GemmKernel.Dealt"/>'s or <see cref="GemmKernel.Packed"/>'s product: each matrix of the batch by
    /// <c>Native.DealtSgemm.Run</c> or <see cref="Native.DealtSgemm.RunPacked"/>, reading the
    /// operands where they lie when BLAS can (a copy otherwise), into a new row-major result. Where the direct BLAS call
    /// does not apply (not fp32 on the CPU, no BLAS, broadcast batches, dims past BLAS's 32-bit integers) it is
    /// <c>torch.matmul</c>.
    /// </summary>
    private static unsafe Tensor RunPieces(GemmKernel kernel, Tensor a, Tensor b)
    {
        bool batched = a.dim() == 3;
        if (!Native.Blas.Available || a.dim() is not (2 or 3) || b.dim() != a.dim() || batched && a.size(0) != b.size(0)
            || a.dtype != ScalarType.Float32 || b.dtype != ScalarType.Float32 || a.device_type != DeviceType.CPU || b.device_type != DeviceType.CPU
            || Native.TensorMemory.Extent(a) > int.MaxValue || Native.TensorMemory.Extent(b) > int.MaxValue)
            return torch.matmul(a, b);
        using var scope = NewDisposeScope();
        var a3 = Native.Blas.InPlaceOrCopy(batched ? a : a.unsqueeze(0));
        var b3 = Native.Blas.InPlaceOrCopy(batched ? b : b.unsqueeze(0));
        long g = a3.size(0), m = a3.size(1), k = a3.size(2), n = b3.size(2);
        if (m * n > int.MaxValue) return torch.matmul(a, b).MoveToOuterDisposeScope();
        var c = torch.empty([g, m, n], ScalarType.Float32);
        float* ap = (float*)Native.TensorMemory.FirstElement(a3), bp = (float*)Native.TensorMemory.FirstElement(b3);
        float* cp = (float*)Native.TensorMemory.FirstElement(c);
        // B's [p, j] is the second operand's [j, p] in Sgemm's terms: its row and column strides swap.
        for (long i = 0; i < g; i++)
            RunInto(kernel, m, n, k, ap + i * a3.stride(0), a3.stride(1), a3.stride(2), bp + i * b3.stride(0), b3.stride(2), b3.stride(1),
                cp + i * m * n, n);
        GC.KeepAlive(a3);
        GC.KeepAlive(b3);
        return (batched ? c : c.view(m, n)).MoveToOuterDisposeScope();
    }

    /// <summary>An operand's layout as reports and stored keys name it: "row", "col", "row-strided", "col-strided".</summary>
    public static string LayoutName(bool rowMajor, bool contiguous) => (rowMajor ? "row" : "col") + (contiguous ? "" : "-strided");

    /// <summary>The kernel named <paramref name="name"/> (<see cref="Name"/>'s spelling), or null.</summary>
    public static GemmKernel? Parse(string name) => s_all.Where(k => Name(k) == name).Select(k => (GemmKernel?)k).FirstOrDefault();

    /// <summary>The kernel's name in reports and JSON: "blas", "onednn", "blas-dealt", "blas-packed".</summary>
    public static string Name(GemmKernel kernel) => kernel switch
    {
        GemmKernel.Blas => "blas",
        GemmKernel.OneDnn => "onednn",
        GemmKernel.Dealt => "blas-dealt",
        _ => "blas-packed",
    };

    private static bool Applies(Tensor a, Tensor b) =>
        a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.dtype == ScalarType.Float32 && b.dtype == ScalarType.Float32
        && a.device_type == DeviceType.CPU && 2.0 * a.size(0) * a.size(1) * a.size(2) * b.size(2) >= MinFlops;

    private static Signature SignatureOf(Tensor a, Tensor b) =>
        new(a.size(0), a.size(1), a.size(2), b.size(2), a.stride(2) == 1, b.stride(2) == 1, a.is_contiguous(), b.is_contiguous(), Into: false);
}

/// <summary>A kernel choice as kept between processes: the kernel, each candidate's fastest timed call, and when.</summary>
public sealed record StoredGemmChoice(GemmKernel Kernel, IReadOnlyDictionary<GemmKernel, double> BestSeconds, DateTimeOffset MeasuredAt);

/// <summary>
/// Where <see cref="Gemm"/> keeps its choices between processes (<see cref="Gemm.Store"/>), keyed by a product's
/// signature and thread count. The store answers for one machine, BLAS and kernel list: whoever sets it decides that.
/// Both calls may come from several threads at once, and neither may throw: a store that cannot read or write answers
/// null or drops the choice, and the product is measured as without one.
/// </summary>
public interface IGemmTuningStore
{
    StoredGemmChoice? TryGet(string signature);

    void Put(string signature, StoredGemmChoice choice);
}
