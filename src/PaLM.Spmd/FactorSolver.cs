using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Spmd;

/// <summary>A tensor seen through a sharding rule: its dims' factors, and whether it is an operand or a result.</summary>
internal sealed record Port(Value Value, ImmutableArray<int> DimFactors, bool IsResult)
{
    /// <summary>A node's operands then results, each seen through its factor rule.</summary>
    public static List<Port> Of(Node n, ShardingRule rule) =>
        n.Inputs.Select((v, i) => new Port(v, rule.Operands[i], false))
            .Concat(n.Outputs.Select((v, i) => new Port(v, rule.Results[i], true))).ToList();
}

/// <summary>What the solver knows about a tensor: its current sharding and whether a user fixed it.</summary>
public readonly record struct Known(Sharding Sharding, bool Closed);

/// <summary>The decision for one op: mesh axes per factor, and which port proposed each factor's axes.</summary>
internal sealed record FactorAssignment(ImmutableArray<ImmutableArray<string>> Axes, ImmutableArray<Port?> Sources)
{
    /// <summary>The sharding a port gets under this assignment (results: dims only; partial axes come from reductions).</summary>
    public Sharding Project(Port p) => new(p.DimFactors.Select(f => Axes[f]).ToImmutableArray());
}

/// <summary>
/// Decides an op's factor shardings from its tensors' current shardings, GSPMD/Shardy style:
/// <list type="number">
/// <item>each factor takes the axes a tensor proposes for it; user-annotated tensors outrank propagated ones; between
/// differing proposals the one with the fewest bytes to reshard the op's tensors wins (ties: operand order);</item>
/// <item>axes that do not divide the factor's size are dropped from the end (never sharded unevenly);</item>
/// <item>an axis wanted by two factors goes to the one whose assignment costs least overall (e.g. a contraction dim
/// keeping <c>model</c> and leaving a partial sum for a reduce-scatter, rather than gathering both operands).</item>
/// </list>
/// Deterministic: the same graph and mesh always give the same answer.
/// </summary>
internal static class FactorSolver
{
    public static FactorAssignment Solve(ImmutableArray<Factor> factors, IReadOnlyList<Port> ports, Func<Value, Known?> known, Mesh mesh)
    {
        var axes = new ImmutableArray<string>[factors.Length];
        var sources = new Port?[factors.Length];
        var order = Enumerable.Range(0, factors.Length).OrderBy(f => factors[f].Kind == FactorKind.Pass ? 0 : 1).ThenBy(f => f).ToList();
        foreach (var f in order)
        {
            axes[f] = [];
            if (factors[f].Kind == FactorKind.NeedReplication) continue;
            var proposals = new List<(ImmutableArray<string> Axes, Port Port, bool Closed)>();
            foreach (var p in ports)
            {
                if (known(p.Value) is not { } k) continue;
                for (int d = 0; d < p.DimFactors.Length; d++)
                {
                    if (p.DimFactors[d] != f || k.Sharding.DimAxes[d].IsEmpty) continue;
                    var a = Divisible(k.Sharding.DimAxes[d], factors[f].Size, mesh);
                    if (!a.IsEmpty && !proposals.Any(x => x.Axes.SequenceEqual(a) && x.Closed == k.Closed)) proposals.Add((a, p, k.Closed));
                }
            }
            if (proposals.Count == 0) continue;
            if (proposals.Any(x => x.Closed)) proposals.RemoveAll(x => !x.Closed);
            var best = proposals.MinBy(x => FactorCost(f, x.Axes, ports, known, mesh))!;
            axes[f] = best.Axes;
            sources[f] = best.Port;
        }
        ResolveAxisConflicts(factors, order, axes, ports, known, mesh);
        return new FactorAssignment([.. axes], [.. sources]);
    }

    /// <summary>Bytes to bring every known tensor's dims of factor <paramref name="f"/> to <paramref name="cand"/>.</summary>
    private static long FactorCost(int f, ImmutableArray<string> cand, IReadOnlyList<Port> ports, Func<Value, Known?> known, Mesh mesh)
    {
        long cost = 0;
        foreach (var p in ports)
        {
            if (known(p.Value) is not { } k) continue;
            var target = k.Sharding;
            for (int d = 0; d < p.DimFactors.Length; d++)
                if (p.DimFactors[d] == f) target = target.WithDim(d, cand);
            if (!Valid(target)) return long.MaxValue / 4;
            cost += Reshard.Cost(p.Value.Type, k.Sharding.WithPartial([]), target.WithPartial([]), mesh);
        }
        return cost;
    }

    private static void ResolveAxisConflicts(ImmutableArray<Factor> factors, List<int> order, ImmutableArray<string>[] axes,
        IReadOnlyList<Port> ports, Func<Value, Known?> known, Mesh mesh)
    {
        foreach (var axis in mesh.Axes.Select(a => a.Name))
        {
            var claimants = order.Where(f => axes[f].Contains(axis)).ToList();
            if (claimants.Count < 2) continue;
            ImmutableArray<string>[]? best = null;
            long bestCost = long.MaxValue;
            foreach (var winner in claimants)
            {
                var trial = (ImmutableArray<string>[])axes.Clone();
                foreach (var f in claimants)
                    if (f != winner) trial[f] = [.. trial[f].TakeWhile(a => a != axis)];
                var cost = TotalCost(factors, trial, ports, known, mesh);
                if (cost < bestCost) (best, bestCost) = (trial, cost);
            }
            Array.Copy(best!, axes, axes.Length);
        }
    }

    /// <summary>
    /// Bytes to run the op under an assignment: operands resharded to it, plus results brought from the computed layout
    /// (partial over the split reduction factors) to the layout they already have, or, for results without one yet,
    /// the all-reduce their pending sum will need.
    /// </summary>
    internal static long TotalCost(ImmutableArray<Factor> factors, ImmutableArray<string>[] axes, IReadOnlyList<Port> ports,
        Func<Value, Known?> known, Mesh mesh)
    {
        var partial = factors.Select((f, i) => (f, i)).Where(x => x.f.Kind == FactorKind.Reduction).SelectMany(x => axes[x.i]).ToImmutableArray();
        long cost = 0;
        foreach (var p in ports)
        {
            var proj = new Sharding(p.DimFactors.Select(f => axes[f]).ToImmutableArray());
            if (!Valid(proj)) return long.MaxValue / 4;
            if (known(p.Value) is not { } k)
            {
                // A result nobody has laid out yet still pays for its pending sum: at least an all-reduce later.
                if (p.IsResult && !partial.IsEmpty) cost += Reshard.Cost(p.Value.Type, proj.WithPartial(partial), proj, mesh);
                continue;
            }
            cost += p.IsResult
                ? Reshard.Cost(p.Value.Type, proj.WithPartial(partial), k.Sharding.WithPartial([]), mesh)
                : Reshard.Cost(p.Value.Type, k.Sharding.WithPartial([]), proj, mesh);
        }
        return cost;
    }

    /// <summary>The longest prefix of <paramref name="axes"/> whose product divides <paramref name="size"/>.</summary>
    public static ImmutableArray<string> Divisible(ImmutableArray<string> axes, long size, Mesh mesh)
    {
        int n = 0;
        long prod = 1;
        while (n < axes.Length && mesh.HasAxis(axes[n]) && size % (prod * mesh.SizeOf(axes[n])) == 0) prod *= mesh.SizeOf(axes[n++]);
        return axes.Take(n).ToImmutableArray();
    }

    /// <summary>A sharding uses each mesh axis at most once.</summary>
    public static bool Valid(Sharding s)
    {
        var all = s.AllAxes.ToList();
        return all.Distinct().Count() == all.Count;
    }
}
