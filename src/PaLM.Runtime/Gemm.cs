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
/// Chooses the matmul kernel per product by measuring it, as XLA and TorchInductor autotune GEMMs: large fp32 products
/// of one matrix pair (the projections, their gradients, the logits) are timed on both <see cref="GemmKernel"/>s over
/// their first calls, alternating, and then run on the one whose fastest call was faster.
/// <para>
/// Why: on this machine (AMD EPYC, AVX-512) MKL's sgemm tops out near 190 GFLOP/s, its AVX2 speed, while oneDNN's
/// AVX-512 convolution kernels run some of the step's shapes at 250-330 GFLOP/s (palm-cpu's out-projection and
/// logits); others (the 7040-wide fused in-projection) are twice as slow through oneDNN. Which wins depends on the
/// shape, the operands' layouts and the CPU, so it is measured rather than decided by a rule; on a CPU where MKL has
/// its best kernels the tuner simply keeps BLAS.
/// </para>
/// <para>
/// Tuning happens on the step's own calls, so it costs nothing beyond running the slower kernel a few times in the first
/// steps. Products below <see cref="MinFlops"/>, operands broadcast over the batch and other dtypes always use BLAS. The kernels agree to
/// float rounding, not bit for bit: a tuned run can differ from a BLAS-only one by about 1e-6 relative.
/// <c>PALMC_GEMM=blas</c> turns tuning off; <c>PALMC_GEMM=onednn</c> forces the convolution where it applies (to compare).
/// </para>
/// </summary>
public static class Gemm
{
    /// <summary>Products of fewer FLOPs than this (2·M·K·N) are not tuned: at 0.2 GFLOP/ms the timing noise and the
    /// reorders oneDNN adds outweigh any gain.</summary>
    public const double MinFlops = 5e8;

    /// <summary>Calls per kernel whose time does not count: the first builds oneDNN's primitive (JIT) and first-touches
    /// its buffers.</summary>
    public const int WarmupCallsPerKernel = 1;

    /// <summary>Timed calls per kernel, after its warm-up calls, before the choice is made.</summary>
    public const int TrialsPerKernel = 3;

    private enum Mode { Tune, Blas, OneDnn }

    private static readonly Mode s_mode = Environment.GetEnvironmentVariable("PALMC_GEMM")?.Trim().ToLowerInvariant() switch
    {
        "blas" or "mkl" => Mode.Blas,
        "onednn" => Mode.OneDnn,
        _ => Mode.Tune,
    };

    private static readonly ConcurrentDictionary<Signature, Tuning> s_tunings = new();

    /// <summary>The kernels this process may run fp32 products on: what a peak measurement "through the same kernels"
    /// must time.</summary>
    public static IReadOnlyList<GemmKernel> Kernels => s_mode == Mode.Blas ? [GemmKernel.Blas] : [GemmKernel.Blas, GemmKernel.OneDnn];

    /// <summary>A product's shape and operand layouts: what a kernel's speed depends on.</summary>
    private readonly record struct Signature(long Batch, long M, long K, long N, bool ARowMajor, bool BRowMajor);

    /// <summary>A signature's timings so far and, once every kernel has <see cref="TrialsPerKernel"/>, its choice.</summary>
    private sealed class Tuning
    {
        private readonly List<double>[] _seconds = [[], []];
        private int _next;
        private GemmKernel? _chosen;

        /// <summary>The kernel chosen, or null while still measuring (read under the lock: several devices share it).</summary>
        public GemmKernel? Chosen { get { lock (this) return _chosen; } }

        public GemmKernel Next()
        {
            lock (this) return _chosen ?? (GemmKernel)(_next++ % 2);
        }

        private readonly int[] _warmups = new int[2];

        public void Record(GemmKernel k, double seconds)
        {
            lock (this)
            {
                if (_chosen is not null) return;
                if (_warmups[(int)k] < WarmupCallsPerKernel) { _warmups[(int)k]++; return; }
                _seconds[(int)k].Add(seconds);
                // The fastest call, as the peak takes the best run: the tuning calls fall in the first steps, while the
                // heap still grows and a buffer's first touch page-faults (about 80 ms for 56 MB here), which can land
                // on either kernel; a median let that decide (the same product chose each kernel in different runs).
                if (_seconds.All(s => s.Count >= TrialsPerKernel))
                    _chosen = _seconds[(int)GemmKernel.OneDnn].Min() < _seconds[(int)GemmKernel.Blas].Min() ? GemmKernel.OneDnn : GemmKernel.Blas;
            }
        }

        public IReadOnlyList<double> Seconds(GemmKernel k) { lock (this) return [.. _seconds[(int)k]]; }
    }

    /// <summary>A tuned product: its shape, the kernel chosen (null while still measuring) and each kernel's fastest timed call.</summary>
    public sealed record Choice(long Batch, long M, long K, long N, bool ARowMajor, bool BRowMajor, GemmKernel? Kernel, double? BlasSeconds, double? OneDnnSeconds);

    /// <summary>Every product tuned in this process so far (for reports and tests).</summary>
    public static IReadOnlyList<Choice> Choices => [.. s_tunings.Select(p =>
    {
        var (s, t) = (p.Key, p.Value);
        static double? Best(IReadOnlyList<double> xs) => xs.Count == 0 ? null : xs.Min();
        return new Choice(s.Batch, s.M, s.K, s.N, s.ARowMajor, s.BRowMajor, t.Chosen, Best(t.Seconds(GemmKernel.Blas)), Best(t.Seconds(GemmKernel.OneDnn)));
    }).OrderByDescending(c => c.Batch * c.M * c.K * c.N)];

    /// <summary>[B, M, K] · [B, K, N] → [B, M, N] (any strides), on the kernel chosen for its signature.</summary>
    public static Tensor Matmul(Tensor a, Tensor b)
    {
        if (s_mode == Mode.Blas || !Applies(a, b)) return torch.matmul(a, b);
        if (s_mode == Mode.OneDnn) return Run(GemmKernel.OneDnn, a, b);
        var tuning = s_tunings.GetOrAdd(SignatureOf(a, b), _ => new Tuning());
        if (tuning.Chosen is { } chosen) return Run(chosen, a, b);
        var kernel = tuning.Next();
        var sw = Stopwatch.StartNew();
        var c = Run(kernel, a, b);
        tuning.Record(kernel, sw.Elapsed.TotalSeconds);
        return c;
    }

    /// <summary>
    /// C = A·B on <paramref name="kernel"/>, for matrices (A [M, K], B [K, N]) or batches of them (A [B, M, K],
    /// B [B, K, N]); C is row-major either way. oneDNN runs a batch as one grouped convolution, a group per matrix:
    /// input [1, B·K, N, 1], weight [B·M, K, 1, 1], output [1, B·M, N, 1] = C as [B, M, N].
    /// </summary>
    public static Tensor Run(GemmKernel kernel, Tensor a, Tensor b)
    {
        if (kernel == GemmKernel.Blas) return torch.matmul(a, b);
        var batched = a.dim() == 3;
        long g = batched ? a.shape[0] : 1, m = a.shape[^2], k = a.shape[^1], n = b.shape[^1];
        // oneDNN reads plain NCHW tensors in place and reorders them to its blocked formats itself; other strides
        // would take libtorch's channels-last path, measured 2-3x slower, so a strided operand is copied first.
        using var scope = NewDisposeScope();
        var weight = (a.is_contiguous() ? a : a.contiguous()).view(g * m, k, 1, 1);
        var input = (b.is_contiguous() ? b : b.contiguous()).view(1, g * k, n, 1);
        var c = nn.functional.conv2d(input, weight, groups: g);
        return (batched ? c.view(g, m, n) : c.view(m, n)).MoveToOuterDisposeScope();
    }

    private static bool Applies(Tensor a, Tensor b) =>
        a.dim() == 3 && b.dim() == 3 && a.shape[0] == b.shape[0] && a.dtype == ScalarType.Float32 && b.dtype == ScalarType.Float32
        && a.device_type == DeviceType.CPU && 2.0 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] >= MinFlops;

    private static Signature SignatureOf(Tensor a, Tensor b) =>
        new(a.shape[0], a.shape[1], a.shape[2], b.shape[2], a.stride(2) == 1, b.stride(2) == 1);
}
