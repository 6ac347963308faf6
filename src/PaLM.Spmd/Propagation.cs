using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Spmd;

/// <summary>A sharding or input error, located at the DSL line of the tensor concerned.</summary>
public sealed class ShardingException(string message) : Exception(message);

/// <summary>Where one dim of a value got its axes: a user annotation, or a rule of a node reading another value.</summary>
public sealed record DimOrigin(int Dim, Node? Node, Value? From, string Rule);

/// <summary>How a value's sharding was decided (for <c>palmc plan --explain</c>).</summary>
public sealed record Origin(bool Annotated, ImmutableList<DimOrigin> Dims)
{
    public static readonly Origin Default = new(false, []);
}

/// <summary>
/// Completes the user's annotations to a sharding of every value (GSPMD/Shardy style): repeatedly visits every op,
/// forward then backward, letting its rule (<see cref="OpDef.Sharding"/>) decide factor axes from the shardings known
/// so far (<see cref="FactorSolver"/>) and refining its tensors' unsplit dims with them, until nothing changes.
/// Annotated values never change; other values only gain axes on unsplit dims, so the iteration terminates.
/// A <c>repeat</c> ties each carried value to its body argument, body result and loop result, and each stacked
/// parameter to its per-layer slice, so shardings flow through the loop in both directions.
/// </summary>
public sealed class Propagation
{
    private readonly Mesh _mesh;
    private readonly Dictionary<Value, Known> _known = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<Value, Origin> _origins = new(ReferenceEqualityComparer.Instance);
    private readonly List<(Node? Node, ImmutableArray<Factor> Factors, List<Port> Ports, string Rule)> _problems = [];

    private Propagation(Mesh mesh) => _mesh = mesh;

    public IReadOnlyDictionary<Value, Known> Shardings => _known;

    public IReadOnlyDictionary<Value, Origin> Origins => _origins;

    /// <summary>How many sweeps (forward plus backward) the fixed point took.</summary>
    public int Sweeps { get; private set; }

    public Sharding ShardingOf(Value v) => _known.TryGetValue(v, out var k) ? k.Sharding : Sharding.Replicated(v.Type.Rank);

    public Origin OriginOf(Value v) => _origins.TryGetValue(v, out var o) ? o : Origin.Default;

    public static Propagation Run(Graph g, Mesh mesh)
    {
        var p = new Propagation(mesh);
        p.SeedAnnotations(g);
        p.Collect(g.Body);
        p.Iterate();
        p.FillReplicated(g.Body);
        return p;
    }

    // ---- annotations ------------------------------------------------------------------------------------------------

    private void SeedAnnotations(Graph g)
    {
        foreach (var v in g.Body.AllValues())
        {
            if (v.Sharding is not { } s || _known.ContainsKey(v)) continue;
            var checkedSharding = CheckAnnotation(v, s);
            _known[v] = new Known(checkedSharding, true);
            _origins[v] = new Origin(true, []);
        }
    }

    /// <summary>Validates an annotation against the mesh; axes of size 1 are dropped (they split nothing).</summary>
    private Sharding CheckAnnotation(Value v, Sharding s)
    {
        string Where() => v.Loc is { } l ? $"{l}: " : "";
        if (s.DimAxes.Length != v.Type.Rank)
            throw new ShardingException($"{Where()}tensor '{v.Name}': sharding has {s.DimAxes.Length} dims but the tensor has {v.Type.Rank}");
        var seen = new HashSet<string>();
        var dims = new List<ImmutableArray<string>>();
        for (int d = 0; d < v.Type.Rank; d++)
        {
            var dim = v.Type.Dims[d];
            long prod = 1;
            foreach (var a in s.DimAxes[d])
            {
                if (!_mesh.HasAxis(a))
                    throw new ShardingException($"{Where()}tensor '{v.Name}': dim '{dim.Name}' is split over mesh axis '{a}', which the mesh ({_mesh}) does not have");
                if (!seen.Add(a))
                    throw new ShardingException($"{Where()}tensor '{v.Name}': mesh axis '{a}' is used twice (a device cannot hold two different pieces on one axis)");
                prod *= _mesh.SizeOf(a);
                if (dim.Size % prod != 0)
                    throw new ShardingException(
                        $"{Where()}tensor '{v.Name}': dim '{dim.Name}' (size {dim.Size}) does not divide evenly over mesh axis '{a}' " +
                        $"({(prod == _mesh.SizeOf(a) ? $"size {prod}" : $"{prod} pieces with the axes before it")}); uneven shards are refused, " +
                        "not padded or silently replicated: choose sizes that divide or another axis");
            }
            dims.Add([.. s.DimAxes[d].Where(a => _mesh.SizeOf(a) > 1)]);
        }
        return new Sharding([.. dims]);
    }

    // ---- the problems: one per op, plus the ties of each repeat --------------------------------------------------

    private void Collect(Block block)
    {
        foreach (var n in block.Nodes)
        {
            var rule = n.Op.Sharding(n);
            if (rule.IsFactorRule)
            {
                _problems.Add((n, rule.Factors, Port.Of(n, rule), $"{n.Op.Name} {rule}"));
            }
            else if (rule == ShardingRule.Region)
            {
                CollectRepeat(n);
                Collect(n.Regions[0]);
            }
            else throw new InvalidOperationException($"{n.Op.Name}: a '{rule.Kind}' op in a graph before partitioning");
        }
    }

    private void CollectRepeat(Node n)
    {
        var body = n.Regions[0];
        var carried = (int)n.Attr<IntAttr>("carried").Value;
        var stacked = (int)n.Attr<IntAttr>("stacked").Value;
        for (int i = 0; i < n.Inputs.Length; i++)
        {
            var outer = n.Inputs[i];
            var arg = body.Args[i];
            var isStacked = i >= carried && i < carried + stacked;
            var factors = outer.Type.Dims.Select((d, k) =>
                new Factor(d.Name, d.Size, isStacked && k == 0 ? FactorKind.NeedReplication : FactorKind.Pass)).ToImmutableArray();
            var all = Enumerable.Range(0, outer.Type.Rank).ToImmutableArray();
            var inner = isStacked ? all.RemoveAt(0) : all;
            var ports = new List<Port> { new(outer, all, false), new(arg, inner, true) };
            if (i < carried)
            {
                ports.Add(new Port(body.Results[i], all, false));
                ports.Add(new Port(n.Outputs[i], all, true));
            }
            var what = i < carried ? "carried through" : isStacked ? "sliced per iteration of" : "passed unchanged into";
            _problems.Add((n, factors, ports, $"{what} repeat over {n.Attr<DimsAttr>("count").Names[0]}"));
        }
        // Per-iteration results are stacked over the loop's dim, which stays whole (each iteration writes one slice).
        for (int k = carried; k < n.Outputs.Length; k++)
        {
            var outer = n.Outputs[k];
            var factors = outer.Type.Dims.Select((d, j) => new Factor(d.Name, d.Size, j == 0 ? FactorKind.NeedReplication : FactorKind.Pass)).ToImmutableArray();
            var all = Enumerable.Range(0, outer.Type.Rank).ToImmutableArray();
            var ports = new List<Port> { new(body.Results[k], all.RemoveAt(0), false), new(outer, all, false) };
            _problems.Add((n, factors, ports, $"stacked over the iterations of repeat over {n.Attr<DimsAttr>("count").Names[0]}"));
        }
    }

    // ---- the fixed point --------------------------------------------------------------------------------------------

    private void Iterate()
    {
        const int MaxSweeps = 64;
        for (Sweeps = 1; Sweeps <= MaxSweeps; Sweeps++)
        {
            bool changed = false;
            foreach (var p in _problems) changed |= Visit(p);
            for (int i = _problems.Count - 1; i >= 0; i--) changed |= Visit(_problems[i]);
            if (!changed) return;
        }
        throw new InvalidOperationException($"sharding propagation did not converge in {MaxSweeps} sweeps");
    }

    private bool Visit((Node? Node, ImmutableArray<Factor> Factors, List<Port> Ports, string Rule) problem)
    {
        var a = FactorSolver.Solve(problem.Factors, problem.Ports, v => _known.TryGetValue(v, out var k) ? k : null, _mesh);
        bool changed = false;
        foreach (var port in problem.Ports)
        {
            var had = _known.TryGetValue(port.Value, out var k);
            if (had && k.Closed) continue;
            var cur = had ? k.Sharding : Sharding.Replicated(port.Value.Type.Rank);
            var used = cur.AllAxes.ToHashSet();
            var dims = cur.DimAxes.ToArray();
            var origins = had && _origins.TryGetValue(port.Value, out var o) ? o.Dims : ImmutableList<DimOrigin>.Empty;
            bool refined = false;
            for (int d = 0; d < dims.Length; d++)
            {
                var f = port.DimFactors[d];
                var want = a.Axes[f];
                if (!dims[d].IsEmpty || want.IsEmpty || want.Any(used.Contains)) continue;
                // Results are computed from the factor layout: a result dim only gains axes the op can give it
                // (a reduction factor holding the same axis would make that a partial sum instead).
                dims[d] = want;
                foreach (var x in want) used.Add(x);
                var src = a.Sources[f];
                origins = origins.Add(new DimOrigin(d, problem.Node, src?.Value, problem.Rule));
                refined = true;
            }
            if (!had || refined)
            {
                _known[port.Value] = new Known(new Sharding([.. dims]), false);
                _origins[port.Value] = new Origin(false, origins);
                changed |= refined || !had;
            }
        }
        return changed;
    }

    private void FillReplicated(Block body)
    {
        foreach (var v in body.AllValues())
            if (!_known.ContainsKey(v)) _known[v] = new Known(Sharding.Replicated(v.Type.Rank), false);
    }
}
