using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Diagnostics;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Spmd;

namespace PaLM.Sim;

/// <summary>One plan the search considers: a mesh, a parameter layout and a remat policy.</summary>
public sealed record Candidate(Mesh Mesh, ParameterLayout Layout, RematPolicy Remat)
{
    public override string ToString() => $"mesh {Mesh}, {ParameterLayouts.Phrase(Layout)}, remat {Remat.Name}";
}

/// <summary>A candidate's outcome: its prediction, or why it was rejected (with the bytes when it does not fit).</summary>
public sealed record SearchOutcome(Candidate Candidate, Prediction? Prediction, string? Rejected, long? BytesNeeded = null);

/// <summary>What a search found, ranked by predicted step time, and how long it took.</summary>
public sealed record SearchReport(IReadOnlyList<SearchOutcome> Ranked, IReadOnlyList<SearchOutcome> Rejected, int Considered, int Compiled, TimeSpan Elapsed);

/// <summary>
/// Automatic layout search: every factorization of the device count over the graph's mesh axes (pods as the cluster
/// has them, or one pod axis of 1 so the data axis spans pods), every parameter layout and remat policy. Plans whose
/// parameters and optimizer state alone exceed memory are rejected before compiling; the rest are compiled exactly
/// as palmc would run them, priced, rejected if they do not fit, and ranked by predicted step time.
/// </summary>
public static class LayoutSearch
{
    public static readonly ImmutableArray<RematPolicy> Policies = [RematPolicy.None, RematPolicy.Dots, RematPolicy.Palm, RematPolicy.Full];

    public static SearchReport Run(Graph forward, Hardware hw, long devices, string? dtype = null, int maxModel = 64,
        IEnumerable<RematPolicy>? policies = null, Action<int, int>? progress = null, double memoryReserve = 0.10)
    {
        var sw = Stopwatch.StartNew();
        dtype ??= hw.DefaultDType;
        var candidates = Candidates(forward, hw, devices, maxModel, policies ?? Policies).ToList();
        var outcomes = new ConcurrentBag<SearchOutcome>();
        int done = 0, compiled = 0;
        var usable = (long)(hw.MemoryBytes * (1 - memoryReserve));
        // Compile once per (mesh, layout, policy); memory pruning needs only the mesh and layout.
        Parallel.ForEach(candidates, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, c =>
        {
            try
            {
                var bound = Simulator.MemoryLowerBound(forward, c.Mesh, c.Layout);
                if (bound > usable)
                {
                    outcomes.Add(new SearchOutcome(c, null, "does not fit: parameters and optimizer state alone", bound));
                    return;
                }
                Interlocked.Increment(ref compiled);
                var p = Simulator.Predict(forward, new SimulationConfig { Hardware = hw, Mesh = c.Mesh, Layout = c.Layout, Remat = c.Remat, DType = dtype, MemoryReserve = memoryReserve });
                outcomes.Add(p.Fits ? new SearchOutcome(c, p, null) : new SearchOutcome(c, p, "does not fit", p.MemoryTotal));
            }
            catch (Exception e) when (e is ShardingException or SimulationException or InvalidOperationException)
            {
                outcomes.Add(new SearchOutcome(c, null, e.Message));
            }
            finally
            {
                progress?.Invoke(Interlocked.Increment(ref done), candidates.Count);
            }
        });
        var all = outcomes.ToList();
        var ranked = all.Where(o => o.Rejected is null).OrderBy(o => o.Prediction!.StepSeconds).ThenBy(o => o.Candidate.ToString(), StringComparer.Ordinal).ToList();
        var rejected = all.Where(o => o.Rejected is not null).OrderBy(o => o.Candidate.ToString(), StringComparer.Ordinal).ToList();
        return new SearchReport(ranked, rejected, candidates.Count, compiled, sw.Elapsed);
    }

    /// <summary>The plans considered for <paramref name="devices"/> chips of <paramref name="hw"/>.</summary>
    public static IEnumerable<Candidate> Candidates(Graph forward, Hardware hw, long devices, int maxModel, IEnumerable<RematPolicy> policies)
    {
        var roles = MeshRoles.Of(forward);
        int pods = (int)((devices + hw.ChipsPerPod - 1) / hw.ChipsPerPod);
        var podSizes = roles.Pod is null ? [1L] : pods > 1 ? new[] { (long)pods, 1L } : [1L];
        var policyList = policies.ToList();
        foreach (var pod in podSizes)
        {
            if (devices % pod != 0) continue;
            for (long model = 1; model <= (roles.Model is null ? 1 : maxModel); model++)
            {
                if (devices / pod % model != 0) continue;
                var mesh = roles.Build(pod, devices / pod / model, model);
                foreach (var layout in Enum.GetValues<ParameterLayout>())
                {
                    if (layout == ParameterLayout.ShardedAcrossPods && pod == 1) continue;   // same as as-written
                    foreach (var r in policyList) yield return new Candidate(mesh, layout, r);
                }
            }
        }
    }

    /// <summary>Why <paramref name="o"/> ranks where it does against <paramref name="best"/>: the largest differences.</summary>
    public static string Explain(SearchOutcome o, SearchOutcome best)
    {
        var p = o.Prediction!;
        if (ReferenceEquals(o, best)) return Summary(p);
        var b = best.Prediction!;
        var parts = new List<(double Delta, string Text)>
        {
            (p.Cost.ComputeSeconds - b.Cost.ComputeSeconds, "compute"),
            (p.Cost.MemoryBoundSeconds - b.Cost.MemoryBoundSeconds, "memory-bound ops"),
            (p.Cost.ExposedCommunicationSeconds - b.Cost.ExposedCommunicationSeconds, "exposed communication"),
        };
        var worst = parts.OrderByDescending(x => x.Delta).First();
        return FormattableString.Invariant($"+{p.StepSeconds - b.StepSeconds:F2} s, mostly {worst.Text} (+{worst.Delta:F2} s); {Summary(p)}");
    }

    private static string Summary(Prediction p) => FormattableString.Invariant(
        $"compute {p.Cost.ComputeSeconds:F2} s, memory-bound {p.Cost.MemoryBoundSeconds:F2} s, exposed comm {p.Cost.ExposedCommunicationSeconds:F2} s, {p.MemoryTotal / 1e9:F1} GB/device");
}
