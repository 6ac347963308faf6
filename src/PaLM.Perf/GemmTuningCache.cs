using System.Text.Json;
using PaLM.IR;
using PaLM.Runtime;
using TorchSharp;

namespace PaLM.Perf;

/// <summary>
/// The matmul tuner's choices kept between runs (<see cref="Gemm.Store"/>), under palmc's cache folder
/// (<see cref="CacheDirectory"/>), as XLA can keep its autotuning results: one file per machine (CPU model and cores),
/// BLAS path, kernel list and libtorch build, holding each product signature's choice at its thread count, with every
/// candidate's fastest timed call and when it was measured.
/// <para>
/// Why: on palm-cpu the tuner's trial calls (a warm-up and three timed calls of every kernel on each of 11 signatures)
/// take about 6 s of the first step in every process, and two processes that measure apart may choose differently,
/// so a run and its resumption could differ by float rounding. A stored choice is reused for <see cref="MaxAge"/>;
/// <c>PALMC_GEMM=retune</c> measures again and replaces it, and deleting the folder is always safe.
/// </para>
/// </summary>
public sealed class GemmTuningCache : IGemmTuningStore
{
    public static readonly TimeSpan MaxAge = StoredMeasurement.MaxAge;

    /// <summary>The file: named after the machine's key, worked out on first use (it asks libtorch and MKL, which a
    /// process that never multiplies need not load).</summary>
    public string Path => _path.Value;

    private readonly Lazy<string> _path;
    private readonly Func<DateTimeOffset> _now;
    private readonly Lock _lock = new();
    private Dictionary<string, Entry>? _entries;

    /// <summary>The file for this machine under <paramref name="directory"/>.</summary>
    public GemmTuningCache(string directory, Func<DateTimeOffset>? now = null) : this(directory, MachineKey, now) { }

    /// <summary>The file for the machine described by <paramref name="machine"/> (tests give their own).</summary>
    public GemmTuningCache(string directory, string machine, Func<DateTimeOffset>? now = null) : this(directory, () => machine, now) { }

    private GemmTuningCache(string directory, Func<string> machine, Func<DateTimeOffset>? now)
    {
        _path = new Lazy<string>(() => System.IO.Path.Combine(directory, $"gemm-{StoredMeasurement.Hash(machine())}.json"));
        _now = now ?? (() => DateTimeOffset.UtcNow);
    }

    /// <summary>The cache under <see cref="CacheDirectory.Root"/>, or null when caching is off.</summary>
    public static GemmTuningCache? Default => CacheDirectory.Sub("gemm") is { } dir ? new GemmTuningCache(dir) : null;

    /// <summary>What a stored choice depends on besides its signature and thread count.</summary>
    public static string MachineKey() => string.Join("|", "palmc gemm v1", string.Join(",", Gemm.Kernels.Select(Gemm.Name)),
        Runtime.Native.MklDispatch.Path, PeakFlops.ThisDevice().Model, typeof(torch).Assembly.GetName().Version);

    public StoredGemmChoice? TryGet(string signature)
    {
        lock (_lock)
        {
            _entries ??= Read();
            return _entries.TryGetValue(signature, out var e) && ToChoice(e) is { } c && StoredMeasurement.IsFresh(c.MeasuredAt, _now()) ? c : null;
        }
    }

    public void Put(string signature, StoredGemmChoice choice)
    {
        lock (_lock)
        {
            // Read the file again, so that choices another process stored since this one first read it are kept.
            _entries = Read();
            _entries[signature] = new Entry(Gemm.Name(choice.Kernel),
                choice.BestSeconds.Where(p => double.IsFinite(p.Value)).ToDictionary(p => Gemm.Name(p.Key), p => p.Value), choice.MeasuredAt);
            try
            {
                AtomicFile.WriteAllText(Path, JsonSerializer.Serialize(new FileContents(_entries), s_json));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // The choice still holds for this process; the next one measures it again.
            }
        }
    }

    /// <summary>The stored entries, or none when the file is missing, unreadable or damaged (it is then rewritten by the next
    /// <see cref="Put"/>).</summary>
    private Dictionary<string, Entry> Read()
    {
        try
        {
            if (JsonSerializer.Deserialize<FileContents>(File.ReadAllText(Path), s_json)?.Choices is { } stored)
                return new Dictionary<string, Entry>(stored.Where(p => p.Value?.Kernel is not null), StringComparer.Ordinal);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or NotSupportedException) { }
        return new Dictionary<string, Entry>(StringComparer.Ordinal);
    }

    /// <summary>An entry as a choice; null when it names a kernel this build does not know.</summary>
    private static StoredGemmChoice? ToChoice(Entry e)
    {
        if (Gemm.Parse(e.Kernel) is not { } kernel) return null;
        var best = new Dictionary<GemmKernel, double>();
        foreach (var (name, seconds) in e.BestSeconds ?? [])
            if (Gemm.Parse(name) is { } k && double.IsFinite(seconds) && seconds > 0) best[k] = seconds;
        return new StoredGemmChoice(kernel, best, e.MeasuredAt);
    }

    private static readonly JsonSerializerOptions s_json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    private sealed record Entry(string Kernel, Dictionary<string, double>? BestSeconds, DateTimeOffset MeasuredAt);

    private sealed record FileContents(Dictionary<string, Entry>? Choices);
}
