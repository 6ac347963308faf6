using System.Diagnostics;
using PaLM.Runtime;
using PaLM.Runtime.Distributed;
using TorchSharp;

namespace PaLM.Perf;

/// <summary>One message size of an all-reduce benchmark: the slowest rank's time per repetition, and the bandwidths of the median.</summary>
public sealed record CollectiveSample(long Bytes, IReadOnlyList<double> Seconds, int Ranks)
{
    private IReadOnlyList<double> Sorted => [.. Seconds.Order()];

    public double Median => Sorted[Sorted.Count / 2];

    public double Min => Sorted[0];

    public double Max => Sorted[^1];

    /// <summary>Algorithm bandwidth: bytes / time (bytes per second), as nccl-tests reports it.</summary>
    public double AlgorithmBandwidth => Bytes / Median;

    /// <summary>Bus bandwidth: algbw · 2(n−1)/n, the traffic each link of a ring all-reduce carries (nccl-tests).</summary>
    public double BusBandwidth => AlgorithmBandwidth * 2.0 * (Ranks - 1) / Ranks;
}

/// <summary>What <c>palmc bench --backend mpi</c> measured.</summary>
public sealed record CollectiveBenchReport(string Library, int Ranks, IReadOnlyList<string> Hosts, int Warmup, IReadOnlyList<CollectiveSample> Samples);

/// <summary>
/// Times MPI_Allreduce (sum, float32, in place on a tensor's memory, as <see cref="MpiCollectives.AllReduce"/> reduces
/// its result buffer) between the ranks of the job: per size, warm-up repetitions, then timed ones, each started
/// after a barrier and counted as the slowest rank's time.
/// </summary>
public static class CollectiveBench
{
    public static CollectiveBenchReport Run(MpiWorld world, IReadOnlyList<long> sizes, int repetitions, int warmup)
    {
        ArgumentNullException.ThrowIfNull(world);
        if (repetitions < 1) throw new ArgumentOutOfRangeException(nameof(repetitions));
        Rt.Initialize(world.ThreadsPerRank);
        var hosts = world.AllGather(System.Text.Encoding.UTF8.GetBytes(world.Host.PadRight(64)[..64]))
            .Select(b => System.Text.Encoding.UTF8.GetString(b).TrimEnd()).ToList();
        var samples = new List<CollectiveSample>();
        foreach (var bytes in sizes)
        {
            using var scope = torch.NewDisposeScope();
            var x = torch.ones(bytes / sizeof(float), torch.ScalarType.Float32);
            var times = new List<double>();
            for (int i = 0; i < warmup + repetitions; i++)
            {
                x.fill_(1.0f);   // the same values each time (sums stay small), outside the timed region
                world.Barrier();
                var sw = Stopwatch.StartNew();
                world.AllReduceInPlace(x);
                var mine = sw.Elapsed.TotalSeconds;
                var slowest = world.AllGather(BitConverter.DoubleToInt64Bits(mine)).Max(b => BitConverter.Int64BitsToDouble(b));
                if (i >= warmup) times.Add(slowest);
            }
            if (x[0].item<float>() != world.Size)
                throw new InvalidOperationException($"all-reduce of ones over {world.Size} ranks gave {x[0].item<float>()}");
            samples.Add(new CollectiveSample(bytes, times, world.Size));
        }
        return new CollectiveBenchReport(world.Api.Name, world.Size, hosts, warmup, samples);
    }
}
