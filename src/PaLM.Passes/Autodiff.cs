using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Passes;

/// <summary>What reverse-mode autodiff added to a graph, for plans and dumps.</summary>
public sealed class GradientInfo
{
    /// <summary>Each parameter's gradient (a value of the top-level block).</summary>
    public required IReadOnlyDictionary<Value, Value> Grads { get; init; }

    /// <summary>Per forward loop: the stacked residuals it saves for its backward loop (top-level values, [count, ...]).</summary>
    public required IReadOnlyList<Value> Residuals { get; init; }

    /// <summary>Nodes of backward loop bodies that recompute forward values (rematerialization), with their trip counts.</summary>
    public required IReadOnlyList<(Node Node, long Trips)> Recomputed { get; init; }

    /// <summary>Forward values of the top-level block that backward nodes read (saved without recomputation).</summary>
    public required IReadOnlyList<Value> TopLevelSaved { get; init; }

    /// <summary>Number of nodes of the top-level block that belong to the forward pass (they come first).</summary>
    public required int ForwardNodes { get; init; }
}

/// <summary>
/// Reverse-mode automatic differentiation over the IR. Every op's VJP rule lives in the op table
/// (<see cref="OpDef.Vjp"/>); the gradient is ordinary IR appended after the forward nodes, so it is sharded,
/// partitioned, fused and emitted like the forward. A <c>repeat</c> (lax.scan) is transposed as a loop: the forward
/// loop additionally yields per-layer residuals (stacked over layers) chosen by the remat policy, and a reverse loop
/// runs the layers' VJPs last to first, carrying the cotangent of the carried values and accumulating the cotangents of
/// loop-invariant operands, recomputing inside its body whatever was not saved.
/// </summary>
public sealed class Autodiff
{
    private readonly Graph _g;
    private readonly GraphBuilder _b;
    private readonly Func<Node, RematPolicy> _policyOf;
    private RematPolicy _policy = RematPolicy.None;
    private readonly Func<Value, Sharding?>? _residualSharding;
    private readonly HashSet<Value> _active = new(ReferenceEqualityComparer.Instance);
    private readonly List<Value> _residuals = [];
    private readonly List<(Node, long)> _recomputed = [];

    private Autodiff(Graph g, GraphBuilder b, Func<Node, RematPolicy> policyOf, Func<Value, Sharding?>? residualSharding)
    {
        _g = g;
        _b = b;
        _policyOf = policyOf;
        _residualSharding = residualSharding;
        IndexReaders(g.Body);
    }

    /// <summary>The forward nodes reading each forward value; values a block yields are in <see cref="_escapes"/>.</summary>
    private readonly Dictionary<Value, List<Node>> _readers = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<Value> _escapes = new(ReferenceEqualityComparer.Instance);

    private void IndexReaders(Block block)
    {
        foreach (var n in block.Nodes)
        {
            foreach (var v in n.Inputs)
                (_readers.TryGetValue(v, out var list) ? list : _readers[v] = []).Add(n);
            foreach (var r in n.Regions) IndexReaders(r);
        }
        foreach (var v in block.Results) _escapes.Add(v);
    }

    private IReadOnlyList<Node>? Readers(Value v) =>
        _escapes.Contains(v) ? null : _readers.TryGetValue(v, out var list) ? list : [];

    /// <summary>
    /// Appends to <paramref name="top"/> the forward nodes of <paramref name="g"/> (loops augmented with residuals) and
    /// the backward nodes computing d<paramref name="loss"/>/dp for every parameter p.
    /// <paramref name="residualSharding"/>, when given, pins the layout of each saved layer input (policy palm).
    /// </summary>
    public static GradientInfo Build(Graph g, Value loss, RematPolicy policy, GraphBuilder b, List<Node> top,
        Func<Value, Sharding?>? residualSharding = null) => Build(g, loss, _ => policy, b, top, residualSharding);

    /// <summary>As above, with a policy per forward loop (<c>--remat auto</c> mixes policies across layer groups).</summary>
    public static GradientInfo Build(Graph g, Value loss, Func<Node, RematPolicy> policyOf, GraphBuilder b, List<Node> top,
        Func<Value, Sharding?>? residualSharding = null)
    {
        if (loss.Type.Rank != 0 || !DTypes.IsFloat(loss.Type.DType))
            throw new InvalidOperationException($"the loss {loss} must be a floating-point scalar, is {loss.Type}");
        return new Autodiff(g, b, policyOf, residualSharding).Run(loss, top);
    }

    /// <summary>
    /// <paramref name="g"/> with its output <paramref name="lossOutput"/> followed by one output <c>d_NAME</c> per
    /// parameter: the gradient alone, for checking it and for tools.
    /// </summary>
    public static Graph GradientGraph(Graph g, string lossOutput = "loss", RematPolicy? policy = null)
    {
        var index = g.OutputNames.IndexOf(lossOutput);
        if (index < 0) throw new InvalidOperationException($"graph '{g.Name}' has no output '{lossOutput}'");
        var b = GraphBuilder.Continuing(g);
        var top = new List<Node>();
        var info = Build(g, g.Body.Results[index], policy ?? RematPolicy.None, b, top);
        var ps = g.Parameters.ToList();
        var graph = new Graph(g.Name, g.Dims, g.Mesh, g.Args, new Block(g.Body.Args, [.. top], [g.Body.Results[index], .. ps.Select(p => info.Grads[p.Value])]),
            [lossOutput, .. ps.Select(p => "d_" + p.Value.Name)]);
        Verifier.Verify(graph);
        return graph;
    }

    private GradientInfo Run(Value loss, List<Node> top)
    {
        foreach (var p in _g.Parameters)
            if (DTypes.IsFloat(p.Value.Type.DType)) _active.Add(p.Value);
        MarkActive(_g.Body);

        // Forward: the graph's nodes as they are; loops get their residual outputs once the backward pass knows them.
        var start = top.Count;
        top.AddRange(_g.Body.Nodes);
        var forwardNodes = top.Count;
        var ct = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
        ct[loss] = Emit(top, "constant", [], GraphBuilder.Attrs(("value", new FloatAttr(1.0)), ("dtype", new DTypeAttr(loss.Type.DType))), "d_" + loss.Name, null)[0];

        // Graph arguments are held anyway (parameters, inputs): only values the forward computes count as saved.
        var inForward = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        // Views of arguments (remat auto's per-group slices of stacked parameters) hold no memory of their own either.
        var args = new HashSet<Value>(_g.Body.Args, ReferenceEqualityComparer.Instance);
        foreach (var n in _g.Body.Nodes)
            if (!(n.Op.Name == "split" && args.Contains(n.Inputs[0])))
                foreach (var o in n.Outputs) inForward.Add(o);
        var saved = new HashSet<Value>(ReferenceEqualityComparer.Instance);

        for (int i = _g.Body.Nodes.Length - 1; i >= 0; i--)
        {
            var n = _g.Body.Nodes[i];
            var outCts = n.Outputs.Select(o => ct.GetValueOrDefault(o)).ToImmutableArray();
            if (outCts.All(c => c is null)) continue;
            if (n.Op.HasRegion)
            {
                top[start + i] = TransposeLoop(n, outCts, top, ct, trips: 1, v => { if (inForward.Contains(v)) saved.Add(v); return v; });
                continue;
            }
            var ins = Vjp(n, v => { if (inForward.Contains(v)) saved.Add(v); return v; }, outCts, top);
            Accumulate(n.Inputs, ins, ct, top, n.Loc);
        }
        var grads = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
        foreach (var p in _g.Parameters)
            grads[p.Value] = ct.TryGetValue(p.Value, out var d) ? d : Zeros(top, p.Value.Type, "d_" + p.Value.Name, p.Value.Loc);
        return new GradientInfo
        {
            Grads = grads,
            Residuals = _residuals,
            Recomputed = _recomputed,
            TopLevelSaved = [.. saved.Where(v => DTypes.IsFloat(v.Type.DType)).OrderBy(v => v.Id)],
            ForwardNodes = forwardNodes,
        };
    }

    // ---- activity: a value needs a cotangent when it is floating point and depends on a parameter ------------------

    private void MarkActive(Block block)
    {
        foreach (var n in block.Nodes)
        {
            if (n.Op.HasRegion) MarkLoopActive(n);
            else if (n.Inputs.Any(_active.Contains))
                foreach (var o in n.Outputs)
                    if (DTypes.IsFloat(o.Type.DType)) _active.Add(o);
        }
    }

    private void MarkLoopActive(Node n)
    {
        var body = n.Regions[0];
        var carried = Carried(n);
        for (int i = 0; i < n.Inputs.Length; i++)
            if (_active.Contains(n.Inputs[i])) _active.Add(body.Args[i]);
        // A carried value becomes active once any iteration makes it depend on a parameter: iterate to the fixed point.
        while (true)
        {
            MarkActive(body);
            bool changed = false;
            for (int i = 0; i < carried; i++)
                if (_active.Contains(body.Results[i]) && _active.Add(body.Args[i])) changed = true;
            if (!changed) break;
        }
        for (int k = 0; k < n.Outputs.Length; k++)
            if (_active.Contains(body.Results[k]) || (k < carried && _active.Contains(n.Inputs[k]))) _active.Add(n.Outputs[k]);
    }

    // ---- one node ---------------------------------------------------------------------------------------------------

    private IReadOnlyList<Value?> Vjp(Node n, Func<Value, Value> primal, ImmutableArray<Value?> outCts, List<Node> into)
    {
        var ctx = new VjpContext(n, primal, outCts, i => _active.Contains(n.Inputs[i]),
            (op, inputs, attrs, hint) => Emit(into, op.Name, inputs, attrs, hint, n.Loc), _b.Dims, Readers);
        var ins = n.Op.Vjp(ctx);
        if (ins.Count != n.Inputs.Length)
            throw new InvalidOperationException($"vjp of {n.Op.Name} returned {ins.Count} cotangents for {n.Inputs.Length} operands");
        for (int i = 0; i < ins.Count; i++)
            if (ins[i] is { } d && !d.Type.Equals(n.Inputs[i].Type))
                throw new InvalidOperationException($"vjp of {n.Op.Name}: cotangent {d.Type} for operand {n.Inputs[i]}: {n.Inputs[i].Type}");
        return ins;
    }

    /// <summary>Adds each operand's new cotangent to what it has (sums of contributions in arrival order).</summary>
    private void Accumulate(IReadOnlyList<Value> inputs, IReadOnlyList<Value?> cts, Dictionary<Value, Value> ct, List<Node> into, SourceLoc? loc)
    {
        for (int i = 0; i < inputs.Count; i++)
        {
            if (cts[i] is not { } d || !_active.Contains(inputs[i])) continue;
            ct[inputs[i]] = ct.TryGetValue(inputs[i], out var had)
                ? Emit(into, "add", [had, d], GraphBuilder.Attrs(), "d_" + inputs[i].Name, loc)[0]
                : d;
        }
    }

    // ---- loops ------------------------------------------------------------------------------------------------------

    /// <summary>
    /// Transposes a forward loop: emits its backward loop into <paramref name="into"/> and returns the forward loop
    /// rebuilt to also yield the residuals the backward loop reads.
    /// </summary>
    private Node TransposeLoop(Node fwd, ImmutableArray<Value?> outCts, List<Node> into, Dictionary<Value, Value> ct, long trips, Func<Value, Value> outerPrimal)
    {
        var body = fwd.Regions[0];
        _policy = _policyOf(fwd);
        var carried = Carried(fwd);
        var stacked = (int)fwd.Attr<IntAttr>("stacked").Value;
        var count = ControlOps.Count(fwd, _b.Dims);
        var countDim = _b.Dims[fwd.Attr<DimsAttr>("count").Names[0]];
        bool IsStacked(int i) => i >= carried && i < carried + stacked;

        var bw = new List<Node>();
        var bct = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);

        // Backward body arguments. Carried: cotangents of the carried values, then accumulators of invariant cotangents.
        var ctCarried = new List<(int Index, Value Arg)>();
        for (int i = 0; i < carried; i++)
            if (_active.Contains(body.Args[i]))
            {
                var a = _b.NewValue("d_" + body.Args[i].Name, body.Args[i].Type, null, body.Args[i].Loc);
                ctCarried.Add((i, a));
                bct[body.Results[i]] = a;
            }
        var accInvariant = new List<(int Index, Value Arg)>();
        for (int i = carried + stacked; i < fwd.Inputs.Length; i++)
            if (_active.Contains(body.Args[i]))
                accInvariant.Add((i, _b.NewValue("d_" + body.Args[i].Name + ".acc", body.Args[i].Type, null, body.Args[i].Loc)));
        // Stacked: cotangents of the loop's own stacked results.
        var ctYs = new List<(int Index, Value Arg)>();
        for (int k = carried; k < fwd.Outputs.Length; k++)
            if (outCts[k] is not null)
            {
                var a = _b.NewValue("d_" + body.Results[k].Name, body.Results[k].Type, null, body.Results[k].Loc);
                ctYs.Add((k, a));
                bct[body.Results[k]] = a;
            }

        // Primal values in the backward body: saved (a residual), a stacked or invariant operand, or recomputed.
        var residuals = new List<(Value Forward, Value Arg)>();
        var operandArgs = new Dictionary<int, Value>();
        var primal = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
        var producer = new Dictionary<Value, Node>(ReferenceEqualityComparer.Instance);
        foreach (var n in body.Nodes) foreach (var x in n.Outputs) producer[x] = n;
        var argIndex = new Dictionary<Value, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < body.Args.Length; i++) argIndex[body.Args[i]] = i;

        Value Save(Value v)
        {
            var arg = _b.NewValue(v.Name + ".saved", v.Type, null, v.Loc);
            residuals.Add((v, arg));
            return arg;
        }

        Value Primal(Value v)
        {
            if (primal.TryGetValue(v, out var p)) return p;
            if (argIndex.TryGetValue(v, out var i))
            {
                p = i < carried ? Save(v) : operandArgs.TryGetValue(i, out var a) ? a
                    : operandArgs[i] = _b.NewValue(v.Name, v.Type, null, v.Loc);
            }
            else
            {
                var n = producer[v];
                if (n.Op.HasRegion) throw new NotSupportedException($"autodiff of a repeat nested in a repeat body ({n.Loc}) is not supported");
                // Constants are free to recompute whatever the policy (saving them would stack copies per layer).
                if (n.Inputs.Length > 0 && _policy.Saveable(n)) p = Save(v);
                else
                {
                    // Rematerialize: the node again, on primal operands (themselves saved or recomputed).
                    var ins = n.Inputs.Select(Primal).ToList();
                    var outs = _b.Apply(bw, n.Op, ins, n.Attrs, [.. n.Outputs.Select(o => o.Name + ".remat")], n.Loc);
                    _recomputed.Add((bw[^1], trips * count));
                    for (int k = 0; k < outs.Length; k++) primal[n.Outputs[k]] = outs[k];
                    return primal[v];
                }
            }
            primal[v] = p;
            return p;
        }

        for (int j = body.Nodes.Length - 1; j >= 0; j--)
        {
            var n = body.Nodes[j];
            var outCt = n.Outputs.Select(o => bct.GetValueOrDefault(o)).ToImmutableArray();
            if (outCt.All(c => c is null)) continue;
            if (n.Op.HasRegion) throw new NotSupportedException($"autodiff of a repeat nested in a repeat body ({n.Loc}) is not supported");
            Accumulate(n.Inputs, Vjp(n, Primal, outCt, bw), bct, bw, n.Loc);
        }

        // Backward body results: carried cotangents for the previous layer, updated accumulators, per-layer stacked cotangents.
        var results = new List<Value>();
        foreach (var (i, _) in ctCarried)
            results.Add(bct.TryGetValue(body.Args[i], out var d) ? d : Zeros(bw, body.Args[i].Type, "d_" + body.Args[i].Name, fwd.Loc));
        foreach (var (i, acc) in accInvariant)
            results.Add(bct.TryGetValue(body.Args[i], out var d) ? Emit(bw, "add", [acc, d], GraphBuilder.Attrs(), acc.Name, fwd.Loc)[0] : acc);
        var ctStacked = Enumerable.Range(carried, stacked).Where(i => _active.Contains(body.Args[i])).ToList();
        foreach (var i in ctStacked)
            results.Add(bct.TryGetValue(body.Args[i], out var d) ? d : Zeros(bw, body.Args[i].Type, "d_" + body.Args[i].Name, fwd.Loc));

        // The forward loop, rebuilt to also yield its residuals (layouts pinned for palm's fully sharded policy).
        var fwdBodyNodes = body.Nodes.ToList();
        var yields = body.Results.ToList();
        foreach (var (v, _) in residuals)
        {
            var kept = v;
            if (_policy.FullyShardedResiduals && _residualSharding?.Invoke(v) is { } s)
                kept = _b.Apply(fwdBodyNodes, OpTable.Get("sharding_constraint"), [v], GraphBuilder.Attrs(), [v.Name + ".kept"], v.Loc, sharding: s)[0];
            yields.Add(kept);
        }
        var stackedResiduals = residuals.Select(r => _b.NewValue(r.Forward.Name + ".saved", Stack(r.Forward.Type, countDim), null, r.Forward.Loc)).ToList();
        _residuals.AddRange(stackedResiduals);
        var newFwd = new Node(fwd.Op, fwd.Inputs, [.. fwd.Outputs, .. stackedResiduals], fwd.Attrs,
            [new Block(body.Args, [.. fwdBodyNodes], [.. yields])], fwd.Loc);

        // The backward loop: carried [cotangents, accumulators], stacked [residuals, primal operands, cotangents of
        // stacked results], invariant [primal operands].
        var operandStacked = operandArgs.Keys.Where(IsStacked).Order().ToList();
        var operandInvariant = operandArgs.Keys.Where(i => i >= carried + stacked).Order().ToList();
        var bwArgs = new List<Value>();
        var bwOperands = new List<Value>();
        foreach (var (i, a) in ctCarried) { bwArgs.Add(a); bwOperands.Add(outCts[i] ?? Zeros(into, fwd.Outputs[i].Type, "d_" + fwd.Outputs[i].Name, fwd.Loc)); }
        foreach (var (i, a) in accInvariant) { bwArgs.Add(a); bwOperands.Add(Zeros(into, fwd.Inputs[i].Type, a.Name, fwd.Loc)); }
        for (int r = 0; r < residuals.Count; r++) { bwArgs.Add(residuals[r].Arg); bwOperands.Add(stackedResiduals[r]); }
        foreach (var i in operandStacked) { bwArgs.Add(operandArgs[i]); bwOperands.Add(outerPrimal(fwd.Inputs[i])); }
        foreach (var (k, a) in ctYs) { bwArgs.Add(a); bwOperands.Add(outCts[k]!); }
        foreach (var i in operandInvariant) { bwArgs.Add(operandArgs[i]); bwOperands.Add(outerPrimal(fwd.Inputs[i])); }

        var attrs = GraphBuilder.Attrs(("count", fwd.Attr<DimsAttr>("count")),
            ("carried", new IntAttr(ctCarried.Count + accInvariant.Count)),
            ("stacked", new IntAttr(residuals.Count + operandStacked.Count + ctYs.Count)),
            ("reverse", new IntAttr(ControlOps.IsReverse(fwd) ? 0 : 1)));
        var hints = ctCarried.Select(c => "d_" + fwd.Inputs[c.Index].Name)
            .Concat(accInvariant.Select(c => "d_" + fwd.Inputs[c.Index].Name))
            .Concat(ctStacked.Select(i => "d_" + fwd.Inputs[i].Name)).ToList();
        var outs = _b.Apply(into, fwd.Op, bwOperands, attrs, hints.Count > 0 ? hints : ["d_loop"], fwd.Loc,
            [new Block([.. bwArgs], [.. bw], [.. results])]);

        var inCts = new Value?[fwd.Inputs.Length];
        int o = 0;
        foreach (var (i, _) in ctCarried) inCts[i] = outs[o++];
        foreach (var (i, _) in accInvariant) inCts[i] = outs[o++];
        foreach (var i in ctStacked) inCts[i] = outs[o++];
        Accumulate(fwd.Inputs, inCts, ct, into, fwd.Loc);
        return newFwd;
    }

    // ---- helpers ----------------------------------------------------------------------------------------------------

    private static int Carried(Node n) => (int)n.Attr<IntAttr>("carried").Value;

    private static TensorType Stack(TensorType t, Dim count) => t.WithDims(t.Dims.Insert(0, count));

    private ImmutableArray<Value> Emit(List<Node> into, string op, IReadOnlyList<Value> inputs, ImmutableSortedDictionary<string, Attr> attrs, string hint, SourceLoc? loc) =>
        _b.Apply(into, OpTable.Get(op), inputs, attrs, [hint], loc);

    private Value Zeros(List<Node> into, TensorType t, string hint, SourceLoc? loc)
    {
        var zero = Emit(into, "constant", [], GraphBuilder.Attrs(("value", new FloatAttr(0)), ("dtype", new DTypeAttr(t.DType))), "zero", loc)[0];
        return t.Rank == 0 ? zero : Emit(into, "broadcast", [zero], GraphBuilder.Attrs(("to", new DimsAttr([.. t.Dims.Select(d => d.Name)]))), hint, loc)[0];
    }
}
