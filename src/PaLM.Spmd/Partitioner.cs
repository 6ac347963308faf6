using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Spmd;

/// <summary>
/// One collective of the per-device program, with why it is there: the value it moves, the op (and DSL line) that
/// needed the new layout, bytes each device sends per execution, and executions per step (layers for a loop body).
/// </summary>
public sealed record CollectiveRecord(
    CollectiveKind Kind, ImmutableArray<string> Axes, string Tensor, string From, string To,
    long BytesPerDevice, long CountPerStep, string NeededBy, SourceLoc? Loc, string Reason)
{
    public string KindName => Kind.DisplayName();
}

/// <summary>
/// The SPMD partitioner: rewrites the global graph into the one program every device runs, with local shapes
/// (dims split k ways are named <c>d/k</c>) and explicit collectives. Each op runs on the layout its sharding rule and
/// the propagated shardings decide (<see cref="FactorSolver"/>); operands are brought to it by <see cref="Reshard"/>,
/// the only place collectives are made. Pending sums stay pending through ops linear in them and are reduced where a
/// consumer needs the total, by reduce-scatter when the consumer wants that axis splitting a dim.
/// </summary>
public sealed class Partitioner
{
    private readonly Graph _g;
    private readonly Mesh _mesh;
    private readonly Propagation _prop;
    private readonly Dictionary<string, Dim> _dims;
    private readonly List<Dim> _dimOrder;
    private readonly GraphBuilder _b;
    private readonly Dictionary<Value, (Value Local, Sharding State)> _map = new(ReferenceEqualityComparer.Instance);
    private readonly List<CollectiveRecord> _collectives = [];
    private readonly Dictionary<(Value, string), Value> _resharded = new();
    private long _multiplier = 1;

    private Partitioner(Graph g, Mesh mesh, Propagation prop)
    {
        _g = g;
        _mesh = mesh;
        _prop = prop;
        _dims = g.Dims.ToDictionary(d => d.Name);
        _dimOrder = [.. g.Dims];
        _b = new GraphBuilder(_dims);
    }

    public static (Graph Local, IReadOnlyList<CollectiveRecord> Collectives) Run(Graph g, Mesh mesh, Propagation prop)
    {
        var p = new Partitioner(g, mesh, prop);
        var local = p.Build();
        return (local, p._collectives);
    }

    private Graph Build()
    {
        var args = new List<GraphArg>();
        foreach (var a in _g.Args)
        {
            var s = _prop.ShardingOf(a.Value);
            var local = _b.NewValue(a.Value.Name, LocalType(a.Value.Type, s), null, a.Value.Loc);
            _map[a.Value] = (local, s);
            args.Add(new GraphArg(local, a.Kind, a.Init, new SpmdArg(a.Value.Type, s)));
        }
        var nodes = new List<Node>();
        foreach (var n in _g.Body.Nodes) PartitionNode(n, nodes);
        // An output that replaces a parameter or optimizer state leaves in that argument's layout, so the next step can
        // take it as it is.
        Sharding OutLayout(int i) => !_g.OutputUpdates.IsDefaultOrEmpty && _g.OutputUpdates[i] >= 0
            ? _prop.ShardingOf(_g.Args[_g.OutputUpdates[i]].Value) : _prop.ShardingOf(_g.Body.Results[i]);
        var results = _g.Body.Results.Select((v, i) =>
            Bring(v, OutLayout(i), false, nodes, null, $"output '{_g.OutputNames[i]}'", () => "outputs leave the program in their propagated layout")).ToImmutableArray();
        var graph = new Graph(_g.Name, [.. _dimOrder], _mesh, [.. args],
            new Block([.. args.Select(x => x.Value)], [.. nodes], results), _g.OutputNames)
        {
            OutputSpmd = [.. _g.Body.Results.Select((v, i) => new SpmdArg(v.Type, OutLayout(i)))],
            OutputUpdates = _g.OutputUpdates,
        };
        Verifier.Verify(graph);
        return graph;
    }

    // ---- ops --------------------------------------------------------------------------------------------------------

    private void PartitionNode(Node n, List<Node> nodes)
    {
        var rule = n.Op.Sharding(n);
        if (rule == ShardingRule.Region) { PartitionRepeat(n, nodes); return; }
        if (!rule.IsFactorRule) throw new InvalidOperationException($"{n.Op.Name}: cannot partition a '{rule.Kind}' op");

        var ports = Port.Of(n, rule);
        Known? KnownOf(Value v) => _map.TryGetValue(v, out var m) && n.Inputs.Contains(v) ? new Known(m.State, false) : new Known(_prop.ShardingOf(v), false);
        var fa = FactorSolver.Solve(rule.Factors, ports, KnownOf, _mesh);
        fa = SumPendingFirst(n, fa);

        var reductionAxes = rule.Factors.Select((f, i) => (f, i)).Where(x => x.f.Kind == FactorKind.Reduction)
            .SelectMany(x => fa.Axes[x.i]).ToList();
        var carry = CarriedPartial(n, fa);

        var inputs = new List<Value>();
        for (int i = 0; i < n.Inputs.Length; i++)
        {
            var v = n.Inputs[i];
            var target = fa.Project(ports[i]);
            var keep = !carry.IsEmpty && _map[v].State.Partial.SequenceEqual(carry);
            if (keep) target = target.WithPartial(carry);
            var operand = i;
            inputs.Add(Bring(v, target, keep, nodes, n, n.Op.Name, () => Why(n, rule, fa, operand)));
        }

        var attrs = RenameDims(n.Attrs, rule, fa);
        var outs = _b.Apply(nodes, n.Op, inputs, attrs, [.. n.Outputs.Select(o => o.Name)], n.Loc);
        var partial = carry.Concat(reductionAxes).ToImmutableArray();
        for (int r = 0; r < n.Outputs.Length; r++)
        {
            var state = fa.Project(ports[n.Inputs.Length + r]).WithPartial(partial);
            var expected = LocalType(n.Outputs[r].Type, state);
            if (!outs[r].Type.Equals(expected))
                throw new InvalidOperationException($"partitioner: {n.Op.Name} gave {outs[r].Type}, its sharding rule says {expected} (node {n})");
            var local = outs[r];
            if (rule.MeanReduction && reductionAxes.Count > 0)
            {
                // A device's mean over its piece is k times its share of the global mean.
                var k = _mesh.Product(reductionAxes);
                var c = _b.Apply(nodes, OpTable.Get("constant"), [], GraphBuilder.Attrs(("value", new FloatAttr(1.0 / k)), ("dtype", new DTypeAttr(local.Type.DType))), ["inv_shards"], n.Loc)[0];
                local = _b.Apply(nodes, OpTable.Get("mul"), [local, c], GraphBuilder.Attrs(), [n.Outputs[r].Name + ".share"], n.Loc)[0];
            }
            _map[n.Outputs[r]] = (local, state);
        }
    }

    /// <summary>
    /// An add of operands that are all pending sums over the same axes is computed with those axes unsplit, so the sum
    /// stays pending and one reduction (often a reduce-scatter) later serves every operand, instead of one per operand
    /// (attention and MLP outputs of a parallel layer under model parallelism).
    /// </summary>
    private FactorAssignment SumPendingFirst(Node n, FactorAssignment fa)
    {
        if (n.Op.Linearity != Linearity.Sum || n.Inputs.Length < 2) return fa;
        var partials = n.Inputs.Select(v => _map[v].State.Partial).ToList();
        if (partials[0].IsEmpty || !partials.All(p => p.SequenceEqual(partials[0]))) return fa;
        if (!fa.Axes.Any(a => a.Any(partials[0].Contains))) return fa;
        return fa with { Axes = [.. fa.Axes.Select(a => a.RemoveAll(partials[0].Contains))] };
    }

    /// <summary>The pending-sum axes the op can pass through to its result instead of reducing them now.</summary>
    private ImmutableArray<string> CarriedPartial(Node n, FactorAssignment fa)
    {
        var partials = n.Inputs.Select(v => _map[v].State.Partial).ToList();
        var nonEmpty = partials.Where(p => !p.IsEmpty).ToList();
        if (nonEmpty.Count == 0) return [];
        ImmutableArray<string> carry = n.Op.Linearity switch
        {
            Linearity.Unary => partials[0],
            Linearity.Sum when partials.All(p => p.SequenceEqual(partials[0])) => partials[0],
            Linearity.Product when nonEmpty.Count == 1 => nonEmpty[0],
            Linearity.Numerator when partials.Skip(1).All(p => p.IsEmpty) => partials[0],
            _ => [],
        };
        // Axes the op's own layout uses cannot also hold a pending sum.
        return carry.Any(a => fa.Axes.Any(x => x.Contains(a))) ? [] : carry;
    }

    private void PartitionRepeat(Node n, List<Node> nodes)
    {
        var region = n.Regions[0];
        var carried = (int)n.Attr<IntAttr>("carried").Value;
        var stacked = (int)n.Attr<IntAttr>("stacked").Value;
        var inputs = new List<Value>();
        var argStates = new List<Sharding>();
        for (int i = 0; i < n.Inputs.Length; i++)
        {
            var argSharding = _prop.ShardingOf(region.Args[i]);
            argStates.Add(argSharding);
            var isStacked = i >= carried && i < carried + stacked;
            var outer = isStacked ? new Sharding(argSharding.DimAxes.Insert(0, [])) : argSharding;
            inputs.Add(Bring(n.Inputs[i], outer, false, nodes, n, "repeat", () => "a loop operand takes the layout its body argument has"));
        }
        var count = ControlOps.Count(n, _g.DimsByName);
        var bodyArgs = new List<Value>();
        for (int i = 0; i < region.Args.Length; i++)
        {
            var local = _b.NewValue(region.Args[i].Name, LocalType(region.Args[i].Type, argStates[i]), null, region.Args[i].Loc);
            _map[region.Args[i]] = (local, argStates[i]);
            bodyArgs.Add(local);
        }
        var body = new List<Node>();
        _multiplier = checked(_multiplier * count);
        foreach (var inner in region.Nodes) PartitionNode(inner, body);
        var resultStates = region.Results.Select((v, i) => i < carried ? argStates[i] : _prop.ShardingOf(v).WithPartial([])).ToList();
        var results = region.Results.Select((v, i) => Bring(v, resultStates[i], false, body, n, "repeat",
            () => i < carried ? "a carried value keeps one layout across iterations" : "per-iteration results are stacked whole")).ToImmutableArray();
        _multiplier /= count;
        var outs = _b.Apply(nodes, n.Op, inputs, n.Attrs, [.. n.Outputs.Select(o => o.Name)], n.Loc,
            [new Block([.. bodyArgs], [.. body], results)]);
        for (int i = 0; i < outs.Length; i++)
            _map[n.Outputs[i]] = (outs[i], i < carried ? argStates[i] : new Sharding(resultStates[i].DimAxes.Insert(0, [])));
    }

    // ---- resharding -------------------------------------------------------------------------------------------------

    /// <summary>
    /// The local value of <paramref name="v"/> in layout <paramref name="target"/>, emitting the collectives
    /// <see cref="Reshard.Plan"/> lists, each recorded with the consumer that needed it.
    /// </summary>
    private Value Bring(Value v, Sharding target, bool keepPartial, List<Node> nodes, Node? consumer, string neededBy, Func<string> reason)
    {
        var (local, state) = _map[v];
        // A value several consumers need in the same layout is resharded once (blocks are isolated, so the first
        // copy dominates the later uses).
        var key = target.Format(v.Type) + (keepPartial ? "+keep" : "");
        if (_resharded.TryGetValue((v, key), out var done)) return done;
        var steps = Reshard.Plan(v.Type, state, target, _mesh, keepPartial);
        foreach (var step in steps)
        {
            var (before, after) = (state, step.After);
            var axes = new DimsAttr(step.Axes);
            var attrs = step.Kind switch
            {
                CollectiveKind.AllReduce => GraphBuilder.Attrs(("axes", axes)),
                CollectiveKind.AllToAll => GraphBuilder.Attrs(
                    ("split", Name(v, step.SplitDim, before)), ("split_to", Name(v, step.SplitDim, after)),
                    ("concat", Name(v, step.Dim, before)), ("concat_to", Name(v, step.Dim, after)), ("axes", axes)),
                _ => GraphBuilder.Attrs(("along", Name(v, step.Dim, before)), ("to", Name(v, step.Dim, after)), ("axes", axes)),
            };
            state = after;
            local = _b.Apply(nodes, OpTable.Get(step.Kind.OpName()), [local], attrs, [v.Name], consumer?.Loc ?? v.Loc)[0];
            if (step.Kind != CollectiveKind.ShardSlice)
                _collectives.Add(new CollectiveRecord(step.Kind, step.Axes, v.Name, before.Format(v.Type), after.Format(v.Type),
                    step.Bytes, _multiplier, neededBy, consumer?.Loc ?? v.Loc, reason()));
        }
        if (steps.Count > 0) _resharded[(v, key)] = local;
        return local;
    }

    /// <summary>The local name of <paramref name="v"/>'s dim <paramref name="dim"/> under layout <paramref name="s"/>.</summary>
    private DimsAttr Name(Value v, int dim, Sharding s) => new([Register(Sharding.LocalDim(v.Type.Dims[dim], s.Shards(dim, _mesh))).Name]);

    // ---- local dims ---------------------------------------------------------------------------------------------------

    private TensorType LocalType(TensorType global, Sharding s)
    {
        var t = s.LocalType(global, _mesh);
        foreach (var d in t.Dims) Register(d);
        return t;
    }

    private Dim Register(Dim d)
    {
        if (_dims.TryGetValue(d.Name, out var had))
        {
            if (had.Size != d.Size) throw new InvalidOperationException($"partitioner: local dim '{d.Name}' has sizes {had.Size} and {d.Size}");
            return had;
        }
        _dims[d.Name] = d;
        _dimOrder.Add(d);
        return d;
    }

    /// <summary>Renames dim names in attributes (over=, along=, einsum subscripts...) to their local names under the assignment.</summary>
    private ImmutableSortedDictionary<string, Attr> RenameDims(ImmutableSortedDictionary<string, Attr> attrs, ShardingRule rule, FactorAssignment fa)
    {
        var map = new Dictionary<string, string>();
        for (int f = 0; f < rule.Factors.Length; f++)
            map[rule.Factors[f].Name] = Register(Sharding.LocalDim(new Dim(rule.Factors[f].Name, rule.Factors[f].Size), _mesh.Product(fa.Axes[f]))).Name;
        string R(string s) => map.TryGetValue(s, out var x) ? x : s;
        return attrs.ToImmutableSortedDictionary(kv => kv.Key, kv => kv.Value switch
        {
            DimsAttr d => new DimsAttr([.. d.Names.Select(R)]),
            DimListsAttr l => new DimListsAttr([.. l.Lists.Select(x => x.Select(R).ToImmutableArray())]),
            var other => other,
        }, StringComparer.Ordinal);
    }

    /// <summary>Why operand <paramref name="i"/> of <paramref name="n"/> needs the layout the assignment gives it.</summary>
    private static string Why(Node n, ShardingRule rule, FactorAssignment fa, int i)
    {
        var parts = new List<string>();
        var dims = n.Inputs[i].Type.Dims;
        for (int d = 0; d < rule.Operands[i].Length; d++)
        {
            var f = rule.Factors[rule.Operands[i][d]];
            var axes = fa.Axes[rule.Operands[i][d]];
            var label = f.Name == dims[d].Name ? f.Name : $"{dims[d].Name} (as {f.Name})";
            parts.Add(f.Kind == FactorKind.NeedReplication ? $"{label} whole ({n.Op.Name} needs it)"
                : axes.IsEmpty ? $"{label} unsplit" : $"{label} over {string.Join(",", axes)}");
        }
        return $"{n.Op.Name} runs with {string.Join(", ", parts)}";
    }
}
