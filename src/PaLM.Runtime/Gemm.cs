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
}

/// <summary>
/// Chooses the matmul kernel per product by measuring it, as XLA and TorchInductor autotune GEMMs (and as
/// <c>torch.backends.cudnn.benchmark</c> picks convolution algorithms): the first time a large fp32 product signature is
/// seen, both <see cref="GemmKernel"/>s run it back to back on its operands (a warm-up call each, then
/// <see cref="TrialsPerKernel"/> timed calls each, alternating), and the one whose fastest call was faster runs that
/// signature from then on.
/// <para>
/// Why: which kernel wins depends on the shape, the operands' layouts and the CPU, so it is measured rather than decided
/// by a rule. On this machine (AMD EPYC, Zen 5, AVX-512), with MKL left to its vendor check, MKL's sgemm takes its AVX2
/// path and tops out near 190 GFLOP/s while oneDNN's AVX-512 convolution kernels run palm-cpu's projections at 306-355
/// GFLOP/s; with the check answered (<see cref="Native.MklDispatch"/>, the default) MKL runs them at 390-420 and the
/// tuner keeps BLAS for all of them. Batched attention products were slower through oneDNN even against MKL's AVX2
/// kernels (26-48 ms vs 10, 2026-12-04).
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

    private enum Mode { Tune, Blas, OneDnn }

    private static readonly Mode s_mode = Environment.GetEnvironmentVariable("PALMC_GEMM")?.Trim().ToLowerInvariant() switch
    {
        "blas" or "mkl" => Mode.Blas,
        "onednn" => Mode.OneDnn,
        _ => Mode.Tune,
    };

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
        Mode.Tune when !TuningAllowed => [GemmKernel.Blas],
        _ => [GemmKernel.Blas, GemmKernel.OneDnn],
    };

    /// <summary>A product's shape and operand layouts: what a kernel's speed depends on (an operand that is not
    /// contiguous is copied before oneDNN reads it).</summary>
    private readonly record struct Signature(long Batch, long M, long K, long N, bool ARowMajor, bool BRowMajor, bool AContiguous, bool BContiguous);

    /// <summary>A signature's measurement, its choice and how often each kernel ran it since.</summary>
    private sealed class Tuning
    {
        private readonly double[] _best = [double.PositiveInfinity, double.PositiveInfinity];
        private readonly long[] _runs = new long[2];
        private GemmKernel? _chosen;

        /// <summary>The kernel for this call: measured on <paramref name="a"/> and <paramref name="b"/> by the first
        /// caller, under the lock, so every device waits for and gets the same choice.</summary>
        public GemmKernel Choose(Tensor a, Tensor b)
        {
            lock (this)
            {
                if (_chosen is null)
                {
                    for (int round = 0; round < WarmupCallsPerKernel + TrialsPerKernel; round++)
                        foreach (var k in (GemmKernel[])[GemmKernel.Blas, GemmKernel.OneDnn])
                        {
                            var sw = Stopwatch.StartNew();
                            using (var c = Run(k, a, b)) { }
                            if (round >= WarmupCallsPerKernel) _best[(int)k] = Math.Min(_best[(int)k], sw.Elapsed.TotalSeconds);
                        }
                    _chosen = _best[(int)GemmKernel.OneDnn] < _best[(int)GemmKernel.Blas] ? GemmKernel.OneDnn : GemmKernel.Blas;
                }
                _runs[(int)_chosen.Value]++;
                return _chosen.Value;
            }
        }

        public Choice Report(Signature s)
        {
            lock (this)
                return new Choice(s.Batch, s.M, s.K, s.N, s.ARowMajor, s.BRowMajor, s.AContiguous, s.BContiguous, _chosen,
                    double.IsFinite(_best[0]) ? _best[0] : null, double.IsFinite(_best[1]) ? _best[1] : null, _runs[0], _runs[1]);
        }
    }

    /// <summary>A tuned product: its shape, the kernel chosen, each kernel's fastest timed call, and how many calls
    /// each kernel has run since (the tuning's own calls not counted).</summary>
    public sealed record Choice(long Batch, long M, long K, long N, bool ARowMajor, bool BRowMajor, bool AContiguous, bool BContiguous,
        GemmKernel? Kernel, double? BlasSeconds, double? OneDnnSeconds, long BlasCalls, long OneDnnCalls);

    /// <summary>Every product tuned in this process so far (for reports and tests).</summary>
    public static IReadOnlyList<Choice> Choices =>
        [.. s_tunings.Select(p => p.Value.Report(p.Key)).OrderByDescending(c => c.Batch * c.M * c.K * c.N)];

    /// <summary>[B, M, K] · [B, K, N] → [B, M, N] (any strides), on the kernel chosen for its signature.</summary>
    public static Tensor Matmul(Tensor a, Tensor b)
    {
        if (s_mode == Mode.Blas || !Applies(a, b)) return torch.matmul(a, b);
        if (s_mode == Mode.OneDnn) return Run(GemmKernel.OneDnn, a, b);
        if (!TuningAllowed) return torch.matmul(a, b);
        var tuning = s_tunings.GetOrAdd(SignatureOf(a, b), _ => new Tuning());
        return Run(tuning.Choose(a, b), a, b);
    }

    /// <summary>
    /// C = A·B on <paramref name="kernel"/>, for matrices (A [M, K], B [K, N]) or batches of them (A [B, M, K],
    /// B [B, K, N]); C is a new row-major tensor either way. oneDNN runs a batch as one grouped convolution, a group per
    /// matrix: input [1, B·K, N, 1], weight [B·M, K, 1, 1], output [1, B·M, N, 1] = C as [B, M, N].
    /// </summary>
    public static Tensor Run(GemmKernel kernel, Tensor a, Tensor b)
    {
        if (kernel == GemmKernel.Blas || a.numel() == 0 || b.numel() == 0) return torch.matmul(a, b);
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

    /// <summary>The kernel's name in reports and JSON: "blas", "onednn".</summary>
    public static string Name(GemmKernel kernel) => kernel == GemmKernel.Blas ? "blas" : "onednn";

    private static bool Applies(Tensor a, Tensor b) =>
        a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.dtype == ScalarType.Float32 && b.dtype == ScalarType.Float32
        && a.device_type == DeviceType.CPU && 2.0 * a.size(0) * a.size(1) * a.size(2) * b.size(2) >= MinFlops;

    private static Signature SignatureOf(Tensor a, Tensor b) =>
        new(a.size(0), a.size(1), a.size(2), b.size(2), a.stride(2) == 1, b.stride(2) == 1, a.is_contiguous(), b.is_contiguous());
}
