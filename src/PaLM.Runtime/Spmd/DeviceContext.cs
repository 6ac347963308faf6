using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>
/// What a generated SPMD program needs to know about the device it runs on: its place in the mesh and the
/// collectives that connect it to the others.
/// </summary>
public sealed class DeviceContext
{
    private readonly long[] _coords;

    /// <summary>The context of device <paramref name="comm"/>.Rank of <paramref name="comm"/>.Mesh.</summary>
    public DeviceContext(ICollectives comm)
    {
        ArgumentNullException.ThrowIfNull(comm);
        Comm = comm;
        Mesh = comm.Mesh;
        Rank = comm.Rank;
        _coords = Mesh.Coords(Rank);
    }

    /// <summary>One device, no axes, collectives that are all the identity: unsharded execution.</summary>
    public static DeviceContext Single { get; } = new(new SingleDeviceCollectives());

    /// <summary>The mesh this device belongs to.</summary>
    public MeshShape Mesh { get; }

    /// <summary>This device's rank (row-major over the mesh axes).</summary>
    public int Rank { get; }

    /// <summary>This device's coordinates, one per mesh axis (a copy).</summary>
    public long[] Coords => (long[])_coords.Clone();

    /// <summary>The collectives connecting this device to the rest of the mesh.</summary>
    public ICollectives Comm { get; }

    /// <summary>
    /// Where a program compiled with profiling on records time per op (null: not recorded). Set by the host that runs
    /// the device, never on <see cref="Single"/>, which all unsharded runs share.
    /// </summary>
    public OpProfile? Profile { get; set; }

    /// <summary>Which shard of a dimension split over <paramref name="axes"/> this device holds (its group index).</summary>
    public long ShardIndex(string[] axes) => Mesh.GroupIndex(Rank, axes);

    /// <summary>Into how many shards a dimension split over <paramref name="axes"/> is cut (the group size).</summary>
    public long ShardCount(string[] axes) => Mesh.GroupSize(axes);

    /// <inheritdoc/>
    public override string ToString() => $"device {Rank} of {Mesh.DeviceCount} ({Mesh})";

    // On one device every group has one member, so every collective returns its input.
    private sealed class SingleDeviceCollectives : ICollectives
    {
        public MeshShape Mesh => MeshShape.Single;
        public int Rank => 0;
        public Tensor AllGather(Tensor x, long dim, string[] axes) => x.alias();
        public Tensor ReduceScatter(Tensor x, long dim, string[] axes) => x.alias();
        public Tensor AllReduce(Tensor x, string[] axes) => x.alias();
        public Tensor AllToAll(Tensor x, long splitDim, long concatDim, string[] axes) => x.alias();
        public void Barrier() { }
        public void Dispose() { }
    }
}
