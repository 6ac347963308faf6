using System.Text.Json;
using PaLM.IR;
using TorchSharp;

namespace PaLM.Perf;

/// <summary>A peak measurement as stored: when it was taken, on what, by which protocol.</summary>
public sealed record CachedPeak(PeakMeasurement Measurement, DateTimeOffset MeasuredAt);

/// <summary>
/// This machine's measured matmul peak, kept between runs. The protocol (2048² and 4096², best of 20 each) takes
/// about 18 s here, while compiling a step takes 2; measuring it in every <c>palmc bench</c> would make the peak most of
/// the tool's cost. So a full measurement is stored per machine (CPU model and cores, threads, dtype, libtorch build,
/// sizes and repetitions), and each later run re-checks it with a short measurement (the smallest size, best of 5):
/// if the check beats the stored peak by more than <see cref="RemeasureMargin"/>, the stored figure understated the
/// machine and the full protocol runs again. MFU is therefore never computed against a peak below what this run
/// itself measured. Entries older than <see cref="MaxAge"/> are measured afresh.
/// </summary>
public sealed class PeakCache(string directory)
{
    public static readonly TimeSpan MaxAge = StoredMeasurement.MaxAge;
    public const double RemeasureMargin = 0.02;
    public const int CheckRepetitions = 5;

    public string Directory { get; } = directory;

    /// <summary>The cache under <see cref="CacheDirectory.Root"/>, or null when caching is off.</summary>
    public static PeakCache? Default => CacheDirectory.Sub("peak") is { } dir ? new PeakCache(dir) : null;

    private static readonly JsonSerializerOptions s_json = new() { WriteIndented = true };

    /// <summary>The entry's file: one per machine, dtype, thread count and protocol.</summary>
    public string PathFor(string dtype, int threads, IReadOnlyList<long> sizes, int repetitions)
    {
        var key = string.Join("|", "palmc peak v3", string.Join(",", PaLM.Runtime.Gemm.Kernels), PaLM.Runtime.Native.MklDispatch.Path, PeakFlops.ThisDevice().Model, threads, dtype,
            typeof(torch).Assembly.GetName().Version, string.Join(",", sizes), repetitions);
        return Path.Combine(Directory, $"{dtype}-{threads}t-{StoredMeasurement.Hash(key)}.json");
    }

    /// <summary>The stored measurement, or null when there is none, it is unreadable or older than <see cref="MaxAge"/>.</summary>
    public CachedPeak? TryGet(string dtype, int threads, IReadOnlyList<long> sizes, int repetitions, DateTimeOffset now)
    {
        try
        {
            var entry = JsonSerializer.Deserialize<CachedPeak>(File.ReadAllText(PathFor(dtype, threads, sizes, repetitions)), s_json);
            if (entry?.Measurement?.Samples is not { Count: > 0 } || entry.Measurement.Flops is not > 0) return null;
            return StoredMeasurement.IsFresh(entry.MeasuredAt, now) ? entry : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or NotSupportedException)
        {
            return null;
        }
    }

    public void Put(CachedPeak entry, IReadOnlyList<long> sizes, int repetitions)
    {
        try
        {
            var m = entry.Measurement;
            AtomicFile.WriteAllText(PathFor(m.DType, m.Threads, sizes, repetitions), JsonSerializer.Serialize(entry, s_json));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}
