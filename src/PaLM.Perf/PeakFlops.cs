using System.Diagnostics;
using PaLM.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Perf;

/// <summary>One size of the peak measurement: the best and the median of the timed repetitions, on the kernel that did best.</summary>
public sealed record PeakSample(long Size, double BestFlops, double MedianFlops, int Repetitions, string Kernel = "blas");

/// <summary>The measured matmul peak of this device: the best rate over all sizes and repetitions.</summary>
public sealed record PeakMeasurement(string DType, int Threads, IReadOnlyList<PeakSample> Samples, double Seconds)
{
    public double Flops => Samples.Max(s => s.BestFlops);
}

/// <summary>
/// The peak a report uses and where it came from: measured in this run, or this machine's stored measurement from
/// <see cref="MeasuredAt"/> that this run's <see cref="Check"/> did not beat.
/// </summary>
public sealed record PeakResult(PeakMeasurement Peak, bool FromCache, DateTimeOffset MeasuredAt, PeakMeasurement? Check)
{
    /// <summary>Seconds this run spent on the peak: the full protocol, the check, or both.</summary>
    public double SecondsThisRun => (FromCache ? 0 : Peak.Seconds) + (Check?.Seconds ?? 0);

    /// <summary>Below this fraction of the stored peak, a run's check says the machine is slower now than when the peak
    /// was measured. A best of 5 reads a few percent under a best of 20; on a shared VM whole phases can run at half speed
    /// (every product, on every kernel), and a run in one reads its step times slow and its MFU low.</summary>
    public const double SlowMachineRatio = 0.8;

    /// <summary>This run's check over the stored peak (null when the peak was measured in this run).</summary>
    public double? CheckRatio => FromCache && Check is { } c ? c.Flops / Peak.Flops : null;

    /// <summary>Whether this run's check came out well below the stored peak (<see cref="SlowMachineRatio"/>).</summary>
    public bool MachineSlowerThanPeak => CheckRatio < SlowMachineRatio;
}

/// <summary>A datasheet peak: FLOP/s of one chip for one dtype, with where the figure comes from.</summary>
public sealed record NominalPeak(string Device, string DType, double Flops, string Source);

/// <summary>
/// Peak FLOP/s, measured and nominal. Measured: large square matmuls (C = A·B, 2n³ FLOPs) of the step's dtype through
/// every kernel the generated code may choose for a product (<see cref="Gemm.Kernels"/>: BLAS, and for fp32 BLAS dealt
/// to the threads and oneDNN), on the same threads, best of many repetitions after warm-up:
/// on a shared machine only the best run approaches what the hardware does (a best of 6 read 245 GFLOP/s here where a
/// best of 30 read 327). Nominal: a datasheet table by device and dtype that answers "unknown" for anything not in it,
/// rather than guessing from clock rates.
/// </summary>
public static class PeakFlops
{
    public static readonly long[] DefaultSizes = [2048, 4096];
    public const int DefaultRepetitions = 20;

    /// <summary>Times <paramref name="repetitions"/> matmuls of each size after <paramref name="warmup"/> untimed ones, on
    /// each of <paramref name="only"/> (default: every kernel the generated code may choose).</summary>
    public static PeakMeasurement Measure(ScalarType dtype, IReadOnlyList<long>? sizes = null, int repetitions = DefaultRepetitions, int warmup = 2,
        Action<double>? progress = null, IReadOnlyList<GemmKernel>? only = null)
    {
        if (repetitions < 1) throw new ArgumentOutOfRangeException(nameof(repetitions), "at least one repetition");
        Rt.Initialize();
        sizes ??= DefaultSizes;
        var total = Stopwatch.StartNew();
        var samples = new List<PeakSample>();
        // The kernels alternate within each repetition so they see the same machine; a size's peak is the better one's best.
        var kernels = only ?? (dtype == ScalarType.Float32 ? Gemm.Kernels : [GemmKernel.Blas]);
        int done = 0, all = sizes.Count * (repetitions + warmup) * kernels.Count;
        foreach (var n in sizes)
        {
            using var scope = NewDisposeScope();
            var gen = new Generator(42);
            var a = randn([n, n], ScalarType.Float32, generator: gen).to_type(dtype);
            var b = randn([n, n], ScalarType.Float32, generator: gen).to_type(dtype);
            var rates = kernels.ToDictionary(k => k, _ => new List<double>());
            for (int i = 0; i < warmup + repetitions; i++)
                foreach (var k in kernels)
                {
                    var sw = Stopwatch.StartNew();
                    using (var c = Gemm.Run(k, a, b)) { }
                    var s = sw.Elapsed.TotalSeconds;
                    if (i >= warmup) rates[k].Add(2.0 * n * n * n / s);
                    progress?.Invoke((double)++done / all);
                }
            var (kernel, best) = rates.Select(p => (p.Key, Sorted: p.Value.Order().ToList())).MaxBy(p => p.Sorted[^1]);
            samples.Add(new PeakSample(n, best[^1], best[best.Count / 2], repetitions, Gemm.Name(kernel)));
        }
        return new PeakMeasurement(DTypeName(dtype), torch.get_num_threads(), samples, total.Elapsed.TotalSeconds);
    }

    /// <summary>
    /// The peak a report uses: this machine's stored full measurement when <paramref name="cache"/> has a fresh one and
    /// a short check in this run does not beat it (see <see cref="PeakCache"/>), else the full protocol now (stored for
    /// next time). With no cache, always the full protocol now.
    /// </summary>
    public static PeakResult MeasureOrReuse(ScalarType dtype, IReadOnlyList<long> sizes, int repetitions, PeakCache? cache,
        Action<double>? progress = null)
    {
        Rt.Initialize();        // first: the stored entry's key includes MKL's kernel path, which initializing settles
        var name = DTypeName(dtype);
        var threads = torch.get_num_threads();
        var now = DateTimeOffset.UtcNow;
        PeakMeasurement? check = null;
        if (cache?.TryGet(name, threads, sizes, repetitions, now) is { } stored)
        {
            // Only on the kernel that set the stored peak at the check's size: the check asks whether the machine does
            // more than the stored best now, and the other kernel's rate (below it when stored) does not answer that. It
            // halves the check (2 × 7 products of 2048² to 7 on this machine, about 0.4 s of bench's overhead).
            long n = sizes.Min();
            check = Measure(dtype, [n], Math.Min(PeakCache.CheckRepetitions, repetitions), progress: progress, only: CheckKernels(stored.Measurement, n));
            if (check.Flops <= stored.Measurement.Flops * (1 + PeakCache.RemeasureMargin))
                return new PeakResult(stored.Measurement, FromCache: true, stored.MeasuredAt, check);
        }
        var full = Measure(dtype, sizes, repetitions, progress: progress);
        cache?.Put(new CachedPeak(full, now), sizes, repetitions);
        return new PeakResult(full, FromCache: false, now, check);
    }

    /// <summary>The kernel whose best set <paramref name="stored"/>'s rate at size <paramref name="n"/>, when the generated
    /// code may still choose it; every kernel otherwise (a stored entry from before kernels were recorded, or a kernel
    /// turned off since).</summary>
    public static IReadOnlyList<GemmKernel>? CheckKernels(PeakMeasurement stored, long n)
    {
        var sample = stored.Samples.FirstOrDefault(s => s.Size == n);
        if (sample is null) return null;
        foreach (var k in Gemm.Kernels)
            if (Gemm.Name(k) == sample.Kernel) return [k];
        return null;
    }

    /// <summary>
    /// The datasheet peak of <paramref name="device"/> for <paramref name="dtype"/> from the hardware catalog
    /// (PaLM.Sim, docs/simulation.md), or null when unknown. CPUs are not listed: their peak depends on the SKU's clocks
    /// and FMA units, which /proc/cpuinfo does not tell reliably, so a CPU reports "unknown" and MFU uses the measured peak.
    /// </summary>
    public static NominalPeak? Nominal(string device, string dtype)
    {
        var catalog = PaLM.Sim.HardwareCatalog.Load(readEnvironment: false);
        var name = catalog.Names.FirstOrDefault(n => n.Equals(device, StringComparison.OrdinalIgnoreCase));
        if (name is null) return null;
        var hw = catalog.Get(name);
        return hw.PeakFlops.TryGetValue(dtype, out var f) ? new NominalPeak(hw.Name, dtype, f, hw.Sources.FirstOrDefault() ?? hw.Origin) : null;
    }

    /// <summary>The IR's spelling of a dtype (f32, bf16, f64), the key of the nominal table.</summary>
    public static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "f32",
        ScalarType.BFloat16 => "bf16",
        ScalarType.Float64 => "f64",
        ScalarType.Float16 => "f16",
        _ => t.ToString().ToLowerInvariant(),
    };

    /// <summary>The device the in-process runtime runs on: "cpu" (libtorch CPU); its model name from /proc/cpuinfo.</summary>
    public static (string Kind, string Model) ThisDevice()
    {
        var model = "unknown CPU";
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                model = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? model;
        }
        catch (IOException) { }
        return ("cpu", $"{model}, {Environment.ProcessorCount} cores");
    }
}
