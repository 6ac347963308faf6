using System.Collections.Immutable;
using System.Diagnostics;
using System.Globalization;
using PaLM.Runtime;
using PaLM.Sim;
using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Perf;

/// <summary>
/// The <c>cpu</c> entry of the hardware catalog: this machine, measured by palmc itself through the kernels the
/// generated code calls. Peak: the best fp32 matmul rate (<see cref="PeakFlops"/>); memory bandwidth: the best of
/// several copies of a 256 MiB tensor (bytes read plus written); capacity: MemTotal. One device is the whole machine
/// (both sockets' cores, libtorch's threads); collectives between in-process virtual devices are memory copies, so
/// the "interconnect" is the memory bandwidth.
/// </summary>
public static class MachineHardware
{
    public static Hardware Measure(IReadOnlyList<long>? peakSizes = null, int peakRepetitions = 10)
    {
        Rt.Initialize();
        var peak = PeakFlops.Measure(ScalarType.Float32, peakSizes ?? [2048], peakRepetitions);
        var bandwidth = MemoryBandwidth();
        var (_, model) = PeakFlops.ThisDevice();
        long memTotal = ReadMemTotal();
        var inv = CultureInfo.InvariantCulture;
        return new Hardware(
            "cpu", $"this machine: {model}",
            ImmutableSortedDictionary.CreateRange(StringComparer.Ordinal, [new KeyValuePair<string, double>("f32", peak.Flops)]),
            "f32",
            MatmulEfficiency: 1.0,   // the peak is itself a measured large-matmul rate
            memTotal, bandwidth,
            ChipsPerHost: 1, ChipsPerPod: 1,
            new Interconnect("switch", 0, 0, 1, bandwidth / 2, 1e-6),
            new Network(bandwidth / 2, 1e-6),
            [
                string.Create(inv, $"measured: fp32 matmul peak {peak.Flops / 1e9:F1} GFLOP/s (best of {peakRepetitions} at {string.Join(", ", peak.Samples.Select(s => s.Size + "²"))}, {peak.Threads} threads)"),
                string.Create(inv, $"measured: memory bandwidth {bandwidth / 1e9:F1} GB/s (best of 5 copies of 256 MiB)"),
                $"/proc/meminfo MemTotal {memTotal} B",
            ],
            "measured by palmc");
    }

    /// <summary>Bytes/s of a large tensor copy (read and write counted), the best of 5 after a warm-up.</summary>
    public static double MemoryBandwidth(long bytes = 256L << 20)
    {
        using var scope = NewDisposeScope();
        var src = ones(bytes / 4, ScalarType.Float32);
        var dst = empty_like(src);
        dst.copy_(src);
        double best = 0;
        for (int i = 0; i < 5; i++)
        {
            var sw = Stopwatch.StartNew();
            dst.copy_(src);
            best = Math.Max(best, 2.0 * bytes / sw.Elapsed.TotalSeconds);
        }
        return best;
    }

    private static long ReadMemTotal()
    {
        try
        {
            var line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal));
            if (line is not null && long.TryParse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], out var kb)) return kb * 1024;
        }
        catch (IOException) { }
        return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
    }
}
