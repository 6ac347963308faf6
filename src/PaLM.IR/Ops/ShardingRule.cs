using System.Collections.Immutable;

namespace PaLM.IR;

/// <summary>What a factor of an op's iteration space allows when it is split over mesh axes.</summary>
public enum FactorKind
{
    /// <summary>Appears in a result: splitting it splits the work and the result alike (no communication).</summary>
    Pass,

    /// <summary>Appears only in operands and is summed over: splitting it leaves each device a partial sum.</summary>
    Reduction,

    /// <summary>Must be whole on every device (softmax's dim, layernorm's dim, a rotated feature dim...).</summary>
    NeedReplication,
}

/// <summary>One factor: a named index of the op's iteration space with its global size.</summary>
public sealed record Factor(string Name, long Size, FactorKind Kind);

/// <summary>How an op's result relates to a partial (pending-sum) operand: lets the partitioner delay the reduction.</summary>
public enum Linearity
{
    /// <summary>Not linear: partial operands are reduced first.</summary>
    None,

    /// <summary>Linear in its one operand (neg, sum, transpose, cast...): a partial operand gives a partial result.</summary>
    Unary,

    /// <summary>add/sub: the result is partial when every operand is partial over the same axes.</summary>
    Sum,

    /// <summary>mul/einsum: the result is partial when exactly one operand is partial and the others are not.</summary>
    Product,

    /// <summary>div: linear in the numerator only.</summary>
    Numerator,
}

/// <summary>
/// An op's sharding rule in Shardy's factor form: the op's iteration space as named factors, and for every operand
/// and result dim the factor it indexes. Propagation reads shardings through it in both directions; the partitioner
/// derives each operand's required layout and the result's layout from it. One rule per op, in the op table.
/// </summary>
public sealed class ShardingRule
{
    private ShardingRule(ImmutableArray<Factor> factors, ImmutableArray<ImmutableArray<int>> operands,
        ImmutableArray<ImmutableArray<int>> results, bool meanReduction, string kind)
    {
        Factors = factors;
        Operands = operands;
        Results = results;
        MeanReduction = meanReduction;
        Kind = kind;
    }

    public ImmutableArray<Factor> Factors { get; }

    /// <summary>For each operand, for each of its dims: the index of its factor.</summary>
    public ImmutableArray<ImmutableArray<int>> Operands { get; }

    /// <summary>For each result, for each of its dims: the index of its factor.</summary>
    public ImmutableArray<ImmutableArray<int>> Results { get; }

    /// <summary>The op averages over its reduction factors: a device's partial must be scaled by 1/shards.</summary>
    public bool MeanReduction { get; }

    /// <summary>"factors", or "region" (repeat: handled structurally) or "collective" (exists only after partitioning).</summary>
    public string Kind { get; }

    public bool IsFactorRule => Kind == "factors";

    /// <summary>The rule of <c>repeat</c>: its operands and results are tied to its body's arguments and results.</summary>
    public static readonly ShardingRule Region = new([], [], [], false, "region");

    /// <summary>The rule of collectives and local slicing, which the partitioner creates and propagation never sees.</summary>
    public static readonly ShardingRule Collective = new([], [], [], false, "collective");

    /// <summary>
    /// The common rule: one factor per distinct dim name over operands and results (dims broadcast and match by name).
    /// Names only in operands are reductions; names in <paramref name="needReplication"/> must stay whole.
    /// </summary>
    public static ShardingRule ByName(Node n, IEnumerable<string>? needReplication = null, bool mean = false) =>
        FromLabels(n.Inputs.Select(v => v.Type.Dims.Select(d => d.Name).ToImmutableArray()),
            n.Outputs.Select(v => v.Type.Dims.Select(d => d.Name).ToImmutableArray()),
            n.Inputs.Concat(n.Outputs).SelectMany(v => v.Type.Dims), needReplication, mean);

    /// <summary>
    /// A rule from explicit labels per operand and result dim (einsum's subscripts, which may rename an operand's dim);
    /// factor sizes come from the dims at the labelled positions.
    /// </summary>
    public static ShardingRule FromLabels(IEnumerable<ImmutableArray<string>> operands, IEnumerable<ImmutableArray<string>> results,
        IEnumerable<Dim> sizesInOrder, IEnumerable<string>? needReplication = null, bool mean = false)
    {
        var ops = operands.ToImmutableArray();
        var res = results.ToImmutableArray();
        var sizes = sizesInOrder.ToList();
        var need = needReplication?.ToHashSet() ?? [];
        var names = new List<string>();
        var sizeOf = new Dictionary<string, long>();
        int k = 0;
        foreach (var label in ops.Concat(res).SelectMany(l => l))
        {
            if (!sizeOf.ContainsKey(label)) { names.Add(label); sizeOf[label] = sizes[k].Size; }
            k++;
        }
        var inResult = res.SelectMany(l => l).ToHashSet();
        var factors = names.Select(nm => new Factor(nm, sizeOf[nm],
            need.Contains(nm) ? FactorKind.NeedReplication : inResult.Contains(nm) ? FactorKind.Pass : FactorKind.Reduction)).ToImmutableArray();
        var index = names.Select((nm, i) => (nm, i)).ToDictionary(p => p.nm, p => p.i);
        ImmutableArray<int> Map(ImmutableArray<string> l) => l.Select(x => index[x]).ToImmutableArray();
        return new ShardingRule(factors, ops.Select(Map).ToImmutableArray(), res.Select(Map).ToImmutableArray(), mean, "factors");
    }

    /// <summary>Names of the dims that appear on only one side of the op (reshape, split, concat must keep them whole).</summary>
    public static IEnumerable<string> OneSided(Node n)
    {
        var ins = n.Inputs.SelectMany(v => v.Type.Dims.Select(d => d.Name)).ToHashSet();
        var outs = n.Outputs.SelectMany(v => v.Type.Dims.Select(d => d.Name)).ToHashSet();
        return ins.Except(outs).Concat(outs.Except(ins));
    }

    /// <summary>Text form, e.g. <c>([b, d], [d, f]) -> ([b, f]) reduction: d</c>, for docs and tests.</summary>
    public override string ToString()
    {
        if (!IsFactorRule) return Kind;
        string Side(ImmutableArray<ImmutableArray<int>> s) =>
            "(" + string.Join(", ", s.Select(l => "[" + string.Join(", ", l.Select(i => Factors[i].Name)) + "]")) + ")";
        var text = Side(Operands) + " -> " + Side(Results);
        foreach (var kind in new[] { FactorKind.Reduction, FactorKind.NeedReplication })
        {
            var fs = Factors.Where(f => f.Kind == kind).Select(f => f.Name).ToList();
            if (fs.Count > 0) text += $" {(kind == FactorKind.Reduction ? "reduction" : "need-replication")}: {string.Join(", ", fs)}";
        }
        return text;
    }
}
