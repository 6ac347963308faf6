using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Sim;

/// <summary>Communication over one set of mesh axes in one step.</summary>
public sealed record AxisComm(string Axes, long Count, double Seconds, double ExposedSeconds, double BytesPerDevice);

/// <summary>What the cost model predicts for one step of a per-device program (times per device, which all run alike).</summary>
public sealed record StepCost(
    double ComputeSeconds,
    double MemoryBoundSeconds,
    double CommunicationSeconds,
    double ExposedCommunicationSeconds,
    double CrossPodBytesPerHost,
    IReadOnlyList<AxisComm> ByAxes)
{
    /// <summary>Compute-bound plus memory-bound op time plus the communication compute does not hide.</summary>
    public double StepSeconds => ComputeSeconds + MemoryBoundSeconds + ExposedCommunicationSeconds;
}

/// <summary>
/// Prices one step of a per-device program (the partitioned training step palmc would run) on a cluster.
/// <para>
/// Ops (roofline): an op takes max(FLOPs / (peak · e), bytes / HBM bandwidth), where bytes are its operands and
/// results as stored, e is the hardware's matmul efficiency for einsums (a catalog figure: the fraction of peak large
/// matmuls reach) and 1 for other ops, and views (op table <c>IsView</c>) cost nothing. Each op streams from memory:
/// no fusion of elementwise chains is assumed. Loops cost their trip count times their body.
/// </para>
/// <para>
/// Precision: every floating-point value is counted at the compute dtype (bf16 on accelerators, as PaLM computed and
/// communicated), except parameters and optimizer state, which stay in the graph's dtype (fp32 master copies).
/// </para>
/// <para>
/// Overlap (a stated assumption, what XLA's async collectives and latency-hiding scheduler aim for): a collective whose
/// operand does not depend on the batch (a weight all-gather, prefetched), or whose result reaches no einsum of its
/// own loop iteration and no value carried to the next (a gradient reduction, drained while later layers compute),
/// runs concurrently with the compute of the same loop body (the same top-level program) and costs only what
/// exceeds that compute. Every other collective is on the critical path and fully exposed.
/// </para>
/// </summary>
public sealed class CostModel
{
    private readonly Topology _topo;
    private readonly double _peak, _efficiency, _bandwidth, _scale;
    private readonly Graph _g;
    private readonly HashSet<Value> _batchDependent = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<Value> _master = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<string, (long Count, double Seconds, double Exposed, double Bytes)> _axes = new(StringComparer.Ordinal);
    private double _crossPodBytesPerChip;

    private CostModel(Graph local, Topology topo, string dtype)
    {
        _g = local;
        _topo = topo;
        var hw = topo.Hardware;
        _peak = hw.Peak(dtype);
        _efficiency = hw.MatmulEfficiency;
        _bandwidth = hw.MemoryBandwidth;
        _scale = PrecisionScale(local, dtype);
        foreach (var a in local.Args)
        {
            // The batch (tokens, targets) has rank > 0; the scalar step number only drives the optimizer.
            if (a.Kind == ArgKind.Input && a.Value.Type.Rank > 0) _batchDependent.Add(a.Value);
            if (a.Kind is ArgKind.Parameter or ArgKind.State) _master.Add(a.Value);
        }
        // The new parameters and state are master copies too (fp32), like the arguments they replace.
        for (int i = 0; i < local.OutputUpdates.Length && i < local.Body.Results.Length; i++)
            if (local.OutputUpdates[i] >= 0) _master.Add(local.Body.Results[i]);
        MarkBatchDependent(local.Body);
    }

    // Which values depend on the batch; a loop's carried values to a fixed point (a carry seeded by a weight becomes
    // batch-dependent once an iteration mixes the batch in). A loop's results are its body's results, one to one.
    private void MarkBatchDependent(Block b)
    {
        foreach (var n in b.Nodes)
        {
            if (n.Op.HasRegion)
            {
                var body = n.Regions[0];
                for (int i = 0; i < body.Args.Length && i < n.Inputs.Length; i++)
                    if (_batchDependent.Contains(n.Inputs[i])) _batchDependent.Add(body.Args[i]);
                int carried = (int)n.Attr<IntAttr>("carried").Value;
                for (bool changed = true; changed;)
                {
                    MarkBatchDependent(body);
                    changed = false;
                    for (int i = 0; i < carried && i < body.Results.Length; i++)
                        if (_batchDependent.Contains(body.Results[i]) && _batchDependent.Add(body.Args[i])) changed = true;
                }
                for (int j = 0; j < n.Outputs.Length && j < body.Results.Length; j++)
                    if (_batchDependent.Contains(body.Results[j])) _batchDependent.Add(n.Outputs[j]);
            }
            else if (n.Inputs.Any(_batchDependent.Contains))
                foreach (var o in n.Outputs) _batchDependent.Add(o);
        }
    }

    /// <summary>Bytes at <paramref name="dtype"/> per byte of the graph's floating-point dtype (bf16 over f32: 0.5).</summary>
    public static double PrecisionScale(Graph g, string dtype) =>
        (double)HardwareCatalog.DTypeBytes(dtype) / DTypes.Bytes(g.Args.Select(a => a.Value.Type.DType).FirstOrDefault(DTypes.IsFloat, DType.F32));

    /// <summary>The predicted cost of one step of <paramref name="local"/> (a per-device program) on <paramref name="topo"/>.</summary>
    public static StepCost Predict(Graph local, Topology topo, string dtype)
    {
        var m = new CostModel(local, topo, dtype);
        var (compute, memory, comm, exposed) = m.Block(local.Body, isLoopBody: false, carried: 0);
        var byAxes = m._axes.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => new AxisComm(kv.Key, kv.Value.Count, kv.Value.Seconds, kv.Value.Exposed, kv.Value.Bytes)).ToList();
        return new StepCost(compute, memory, comm, exposed, m._crossPodBytesPerChip * topo.ChipsPerHost, byAxes);
    }

    private double Bytes(Value v) =>
        DTypes.IsFloat(v.Type.DType) && !_master.Contains(v) ? v.Type.Bytes * _scale : v.Type.Bytes;

    // One block, one trip: (compute-bound s, memory-bound s, all communication s, exposed communication s).
    private (double Compute, double Memory, double Comm, double Exposed) Block(Block b, bool isLoopBody, int carried)
    {
        // Values on this trip's critical path: operands of einsums, and (in a loop body) what is carried onward.
        var critical = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        var producer = new Dictionary<Value, Node>(ReferenceEqualityComparer.Instance);
        foreach (var n in b.Nodes) foreach (var o in n.Outputs) producer[o] = n;
        var work = new Stack<Value>();
        foreach (var n in b.Nodes.Where(n => n.Op.IsMatmul || n.Op.HasRegion)) foreach (var i in n.Inputs) work.Push(i);
        if (isLoopBody) foreach (var r in b.Results.Take(carried)) work.Push(r);
        while (work.Count > 0)
        {
            var v = work.Pop();
            if (!critical.Add(v) || !producer.TryGetValue(v, out var p)) continue;
            foreach (var i in p.Inputs) work.Push(i);
        }

        double compute = 0, memory = 0, comm = 0, exposed = 0, hidden = 0;
        var overlappable = new List<(string Key, double Seconds)>();
        foreach (var n in b.Nodes)
        {
            if (n.Op.HasRegion)
            {
                var body = n.Regions[0];
                long trips = ControlOps.Count(n, _g.DimsByName);
                int carry = (int)n.Attr<IntAttr>("carried").Value;
                var axesBefore = Snapshot();
                var crossBefore = _crossPodBytesPerChip;
                var (c, mem, cm, ex) = Block(body, isLoopBody: true, carry);
                Scale(axesBefore, trips);
                _crossPodBytesPerChip = crossBefore + (_crossPodBytesPerChip - crossBefore) * trips;
                compute += trips * c; memory += trips * mem; comm += trips * cm; exposed += trips * ex;
                continue;
            }
            if (CollectiveOf(n) is { } op)
            {
                var axes = n.Attr<DimsAttr>("axes").Names;
                var x = n.Inputs[0];
                var size = op == CollectiveOp.AllGather ? Bytes(n.Outputs[0]) : Bytes(x);
                var cost = _topo.Cost(op, axes, size);
                var key = string.Join(",", axes);
                _crossPodBytesPerChip += cost.CrossPodBytesPerChip;
                comm += cost.Seconds;
                bool offPath = !_batchDependent.Contains(x) || !critical.Contains(n.Outputs[0]);
                var prev = _axes.GetValueOrDefault(key);
                _axes[key] = (prev.Count + 1, prev.Seconds + cost.Seconds, prev.Exposed + (offPath ? 0 : cost.Seconds), prev.Bytes + size);
                if (offPath) { overlappable.Add((key, cost.Seconds)); hidden += cost.Seconds; }
                else exposed += cost.Seconds;
                continue;
            }
            if (n.Op.IsView) continue;
            double flops = n.Op.Flops(n);
            double bytes = n.Inputs.Sum(Bytes) + n.Outputs.Sum(Bytes);
            double tFlops = flops / (_peak * (n.Op.IsMatmul ? _efficiency : 1.0));
            double tMem = bytes / _bandwidth;
            if (tFlops >= tMem) compute += tFlops;
            else memory += tMem;
        }
        // Overlappable communication hides under this block's own op time; what exceeds it is exposed, charged to each
        // axis set in proportion to its share.
        double ops = compute + memory;
        if (hidden > ops && hidden > 0)
        {
            double excess = hidden - ops;
            exposed += excess;
            foreach (var (key, s) in overlappable)
            {
                var a = _axes[key];
                _axes[key] = a with { Exposed = a.Exposed + excess * s / hidden };
            }
        }
        return (compute, memory, comm, exposed);
    }

    // Loop bodies are priced once and multiplied: the per-axis totals a body added are scaled by its trip count.
    private Dictionary<string, (long Count, double Seconds, double Exposed, double Bytes)> Snapshot() => new(_axes, StringComparer.Ordinal);

    private void Scale(Dictionary<string, (long Count, double Seconds, double Exposed, double Bytes)> before, long trips)
    {
        foreach (var key in _axes.Keys.ToList())
        {
            var now = _axes[key];
            var was = before.GetValueOrDefault(key);
            _axes[key] = (was.Count + (now.Count - was.Count) * trips, was.Seconds + (now.Seconds - was.Seconds) * trips,
                was.Exposed + (now.Exposed - was.Exposed) * trips, was.Bytes + (now.Bytes - was.Bytes) * trips);
        }
    }

    private static CollectiveOp? CollectiveOf(Node n) => n.Op.Name switch
    {
        "all_gather" => CollectiveOp.AllGather,
        "reduce_scatter" => CollectiveOp.ReduceScatter,
        "all_reduce" => CollectiveOp.AllReduce,
        "all_to_all" => CollectiveOp.AllToAll,
        _ => null,
    };
}
