using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PaLM.Perf;

namespace PaLM.Cli.Commands;

/// <summary>
/// <c>palmc bench --backend mpi</c> (one rank of an mpirun job): the MPI all-reduce bandwidth between the ranks, per
/// message size (median of the slowest rank's time, min and max, algorithm and bus bandwidth as nccl-tests reports
/// them). The training-step benchmark runs in-process only.
/// </summary>
internal static class MpiBench
{
    public static int Run(MpiSession mpi, string? file, string sizesText, int repetitions, int warmup, bool json)
    {
        var sizes = sizesText.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(TrainingOptions.ParseBytes).ToList();
        if (sizes.Count == 0) throw new UserError("error: --sizes names no size");
        if (sizes.Any(b => b % 4 != 0 || b / 4 > int.MaxValue)) throw new UserError("error: --sizes: each size must be a multiple of 4 bytes (float32) below 8 GiB");
        var report = CollectiveBench.Run(mpi.World, sizes, repetitions, warmup);
        if (mpi.Rank != 0) return 0;
        string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
        const string Note = "--backend mpi measures MPI all-reduce between the ranks; the training-step benchmark runs in-process (palmc bench FILE)";
        if (json)
        {
            var o = new JsonObject
            {
                ["backend"] = "mpi",
                ["library"] = report.Library,
                ["ranks"] = report.Ranks,
                ["hosts"] = new JsonArray([.. report.Hosts.Select(h => (JsonNode)h)]),
                ["collective"] = "all_reduce",
                ["dtype"] = "float32",
                ["warmup"] = report.Warmup,
                ["note"] = Note,
                ["sizes"] = new JsonArray([.. report.Samples.Select(s => (JsonNode)new JsonObject
                {
                    ["bytes"] = s.Bytes,
                    ["repetitions"] = s.Seconds.Count,
                    ["median_seconds"] = s.Median,
                    ["min_seconds"] = s.Min,
                    ["max_seconds"] = s.Max,
                    ["algbw_gb_per_s"] = s.AlgorithmBandwidth / 1e9,
                    ["busbw_gb_per_s"] = s.BusBandwidth / 1e9,
                })]),
            };
            Console.WriteLine(o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        if (file is not null) Console.WriteLine($"note: {file} is not used: {Note}");
        Console.WriteLine(F($"all-reduce (sum, float32, in place) between {report.Ranks} ranks on {string.Join(", ", report.Hosts.Distinct())}; {report.Library}"));
        Console.WriteLine(F($"median of {repetitions} after {warmup} warm-up; time = slowest rank's; busbw = algbw * 2(n-1)/n"));
        Console.WriteLine("       size    median ms     min ms     max ms   algbw GB/s   busbw GB/s");
        foreach (var s in report.Samples)
            Console.WriteLine(F($"{PlanCommand.Bytes(s.Bytes),11} {s.Median * 1e3,12:F3} {s.Min * 1e3,10:F3} {s.Max * 1e3,10:F3} {s.AlgorithmBandwidth / 1e9,12:F2} {s.BusBandwidth / 1e9,12:F2}"));
        return 0;
    }
}
