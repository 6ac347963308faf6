using PaLM.IR;

namespace PaLM.Sim;

/// <summary>The collectives the cost model prices (the partitioner's four kinds).</summary>
public enum CollectiveOp { AllGather, ReduceScatter, AllReduce, AllToAll }

/// <summary>What one collective costs: seconds, and the bytes one chip sends across the pod boundary (DCN).</summary>
public readonly record struct CollectiveCost(double Seconds, double CrossPodBytesPerChip);

/// <summary>
/// Where a mesh's devices sit on a cluster of <see cref="Hardware"/>, and what a collective over some mesh axes costs there.
/// <para>
/// Placement: ranks are row-major over the mesh axes (the last axis varies fastest), and consecutive ranks fill a pod
/// (or node), which holds <c>devices / pods</c> chips with <c>pods = ceil(devices / chips_per_pod)</c>: 6144 TPU v4
/// chips are two 3072-chip pods, as PaLM ran. A group over some axes then has <c>n1</c> members inside each pod and
/// spans <c>n2</c> pods (<c>n = n1·n2</c>).
/// </para>
/// <para>
/// Inside a pod (ICI, NVLink) collectives use the α-β model of ring algorithms (Thakur et al. 2005):
/// all-gather and reduce-scatter of a tensor of full size V over p members cost s·α + (p-1)/p · V / B, all-reduce
/// twice that (reduce-scatter then all-gather), all-to-all of a local tensor V on a ring s·α + V·p / (4·B)
/// (bisection-bound: a quarter of an all-gather of the p·V result). On a torus B = 2·k·link bandwidth: a
/// bidirectional ring along each of the k torus dims the group occupies, where an axis of n chips occupies
/// ceil(log n / log max_ring) dims (TPU v4 slices are optically reconfigured, so each mesh axis is assumed to get
/// whole torus dims), shared out over the axes innermost first, at most the torus's dims in all. On a switch (NVSwitch) B = links · link bandwidth. The latency
/// steps s are p-1 on a switch and k·(p^(1/k) - 1) on a torus (one ring phase per dim).
/// </para>
/// <para>
/// Across pods (DCN, InfiniBand) collectives are hierarchical, as XLA's multi-slice and NCCL's tree/ring do: reduce
/// or gather inside the pod first, then only the 1/n1 piece crosses, over a ring of n2 pods at the host's network
/// bandwidth shared by its chips (all of them cross at once). All-to-all sends the (n2-1)/n2 share of its data across.
/// </para>
/// </summary>
public sealed class Topology
{
    private readonly Mesh _mesh;
    private readonly long[] _strides;

    public Topology(Hardware hardware, Mesh mesh)
    {
        Hardware = hardware;
        _mesh = mesh;
        Devices = mesh.DeviceCount;
        Pods = (int)((Devices + hardware.ChipsPerPod - 1) / hardware.ChipsPerPod);
        if (Devices % Pods != 0)
            throw new SimulationException($"{Devices} devices do not split evenly into {Pods} pods of at most {hardware.ChipsPerPod} {hardware.Name} chips");
        ChipsPerPod = Devices / Pods;
        ChipsPerHost = (int)Math.Min(hardware.ChipsPerHost, Devices);
        if (ChipsPerPod % ChipsPerHost != 0)
            throw new SimulationException($"{ChipsPerPod} chips per pod is not a whole number of {hardware.Name} hosts ({hardware.ChipsPerHost} chips each)");
        Hosts = Devices / ChipsPerHost;
        _strides = new long[mesh.Axes.Length];
        long s = 1;
        for (int i = mesh.Axes.Length - 1; i >= 0; i--) { _strides[i] = s; s *= mesh.Axes[i].Size; }

        // Each axis: its members inside one pod. A group must not straddle a pod boundary partway: the axis's block of
        // ranks (stride · size) either fits a whole number of times in a pod, or is whole pods with the pod a whole
        // number of strides.
        _inPod = new long[mesh.Axes.Length];
        _torusDims = new int[mesh.Axes.Length];
        for (int i = 0; i < mesh.Axes.Length; i++)
        {
            long n = mesh.Axes[i].Size, stride = _strides[i], block = stride * n;
            bool ok;
            if (stride >= ChipsPerPod) { ok = stride % ChipsPerPod == 0; _inPod[i] = 1; }
            else if (block <= ChipsPerPod) { ok = ChipsPerPod % block == 0; _inPod[i] = n; }
            else { ok = ChipsPerPod % stride == 0 && block % ChipsPerPod == 0; _inPod[i] = ChipsPerPod / stride; }
            if (!ok)
                throw new SimulationException(
                    $"mesh axis '{mesh.Axes[i].Name}' ({n}) straddles pods of {ChipsPerPod} {hardware.Name} chips partway (its groups would span a pod boundary); "
                    + "choose axis sizes whose products divide the pod size or are whole pods");
        }
        // Torus dims are shared out once over the axes, innermost first (the model axis, whose collectives are on the
        // critical path): an axis of n chips in a pod wants ceil(log n / log max_ring) dims; when none are left it shares
        // one with the others (counted as one dim of bandwidth).
        if (hardware.Interconnect.IsTorus)
        {
            int left = hardware.Interconnect.TorusDims;
            for (int i = mesh.Axes.Length - 1; i >= 0; i--)
            {
                int want = TorusDimsFor(_inPod[i]);
                if (want == 0) continue;
                _torusDims[i] = Math.Max(1, Math.Min(want, left));
                left = Math.Max(0, left - want);
            }
        }
    }

    private readonly long[] _inPod;
    private readonly int[] _torusDims;

    public Hardware Hardware { get; }
    public long Devices { get; }
    public int Pods { get; }
    public long ChipsPerPod { get; }
    public int ChipsPerHost { get; }
    public long Hosts { get; }

    /// <summary>How a group over <paramref name="axes"/> splits: members per pod, pods spanned, torus dims used inside a pod.</summary>
    public (long InPod, long Pods, int TorusDims) Split(IEnumerable<string> axes)
    {
        long inPod = 1, pods = 1;
        int dims = 0;
        foreach (var a in axes)
        {
            int i = _mesh.Axes.IndexOf(_mesh.Axes.First(x => x.Name == a));
            inPod *= _inPod[i];
            pods *= _mesh.Axes[i].Size / _inPod[i];
            dims += _torusDims[i];
        }
        return (inPod, pods, Hardware.Interconnect.IsTorus ? Math.Min(dims, Hardware.Interconnect.TorusDims) : 0);
    }

    private int TorusDimsFor(long n)
    {
        if (n <= 1 || !Hardware.Interconnect.IsTorus) return 0;
        int k = 1;
        for (long reach = Hardware.Interconnect.MaxRing; reach < n; reach *= Hardware.Interconnect.MaxRing) k++;
        return k;
    }

    /// <summary>Bytes/s one chip moves inside its pod in a collective spanning <paramref name="torusDims"/> torus dims.</summary>
    public double InPodBandwidth(int torusDims)
    {
        var ici = Hardware.Interconnect;
        return ici.IsTorus ? 2.0 * Math.Max(1, torusDims) * ici.LinkBandwidth : ici.LinksPerChip * ici.LinkBandwidth;
    }

    /// <summary>Bytes/s one chip gets across pods: its host's network bandwidth, shared by the host's chips.</summary>
    public double CrossPodBandwidth => Hardware.Network.BandwidthPerHost / ChipsPerHost;

    /// <summary>
    /// Cost of <paramref name="op"/> over <paramref name="axes"/> on a tensor of <paramref name="bytes"/>: the full
    /// (gathered) size for all-gather, the input for reduce-scatter and all-reduce, the local tensor for all-to-all.
    /// </summary>
    public CollectiveCost Cost(CollectiveOp op, IEnumerable<string> axes, double bytes)
    {
        var (n1, n2, k) = Split(axes);
        if (n1 * n2 <= 1) return default;
        var ici = Hardware.Interconnect;
        var dcn = Hardware.Network;
        double inPod = 0, cross = 0, crossBytes = 0;
        double bw = InPodBandwidth(k), dbw = CrossPodBandwidth;
        // Latency: a torus collective runs one ring phase per dim it spans, so its steps are the rings' lengths summed
        // (k·(n1^(1/k) - 1)), not n1 - 1; a switch ring takes n1 - 1 steps.
        double steps = n1 <= 1 ? 0 : ici.IsTorus ? Math.Max(1, k) * (Math.Pow(n1, 1.0 / Math.Max(1, k)) - 1) : n1 - 1;
        switch (op)
        {
            case CollectiveOp.AllGather:
            case CollectiveOp.ReduceScatter:
                inPod = Ring(n1, bytes, bw, ici.Latency, steps);
                crossBytes = n2 > 1 ? (n2 - 1.0) / n2 * bytes / n1 : 0;
                cross = Ring(n2, bytes / n1, dbw, dcn.Latency);
                break;
            case CollectiveOp.AllReduce:
                inPod = 2 * Ring(n1, bytes, bw, ici.Latency, steps);
                crossBytes = n2 > 1 ? 2 * (n2 - 1.0) / n2 * bytes / n1 : 0;
                cross = 2 * Ring(n2, bytes / n1, dbw, dcn.Latency);
                break;
            case CollectiveOp.AllToAll:
                // Inside the pod: bisection-bound on a ring (torus) or one pass over the links (switch).
                if (n1 > 1)
                    inPod = steps * ici.Latency + (ici.IsTorus ? bytes * n1 / (4.0 * bw) : bytes * (n1 - 1.0) / n1 / bw);
                crossBytes = n2 > 1 ? (n2 - 1.0) / n2 * bytes : 0;
                if (n2 > 1) cross = (n2 - 1) * dcn.Latency + crossBytes / dbw;
                break;
        }
        return new CollectiveCost(inPod + cross, crossBytes);
    }

    /// <summary>
    /// Ring all-gather or reduce-scatter of full size <paramref name="bytes"/> over <paramref name="p"/> members in
    /// <paramref name="steps"/> latency steps (p - 1 by default; fewer on a multi-dim torus).
    /// </summary>
    public static double Ring(long p, double bytes, double bandwidth, double latency, double? steps = null) =>
        p <= 1 ? 0 : (steps ?? p - 1) * latency + (p - 1.0) / p * bytes / bandwidth;
}
