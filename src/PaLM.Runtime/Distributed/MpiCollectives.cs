using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Runtime.Distributed;

/// <summary>
/// The collectives of one device when each device is one MPI rank (world rank = mesh rank). A group over <c>axes</c>
/// (the ranks sharing every other coordinate) is a sub-communicator made once by MPI_Comm_split, colored by the group's
/// first member and keyed by the group index, so MPI rank order is group order. MPI reads and writes tensor memory
/// directly (the tensor's native data pointer): results are allocated by torch and received into, sums are in place.
/// <para>
/// Sums: MPI_SUM over the group in MPI's own order (Open MPI's algorithm for the message size), not the in-process
/// backend's (x0 + x1) + x2 + ...; with two members both are the same IEEE addition, with more the last bits can differ
/// from <see cref="InProcessMesh"/>. Every member still gets the same bits: Open MPI's allreduce and reduce-scatter
/// compute each result element once and distribute it, or combine identical partial sums pairwise (a+b = b+a exactly).
/// float32, float64, int32 and int64 are summed natively; bfloat16 and float16 (no MPI type) are summed in float32 and
/// rounded once. All-gather and all-to-all move bytes, so any dtype works and results are exact.
/// </para>
/// Mismatched SPMD calls (different ops or shapes on group members) are not diagnosed as the in-process backend does:
/// MPI fails with a truncation error or waits; a member killed mid-collective makes mpirun end the job.
/// </summary>
public sealed class MpiCollectives : ICollectives
{
    private readonly MpiWorld _world;
    private readonly Dictionary<string, Group> _groups = new(StringComparer.Ordinal);
    private readonly string[] _allAxes;
    private readonly string _meshKey;

    /// <summary>This rank's collectives on <paramref name="mesh"/>, whose device count must equal the world size.</summary>
    public MpiCollectives(MpiWorld world, MeshShape mesh)
    {
        ArgumentNullException.ThrowIfNull(world);
        ArgumentNullException.ThrowIfNull(mesh);
        if (mesh.DeviceCount != world.Size)
            throw new InvalidOperationException(
                $"the mesh ({mesh}) has {mesh.DeviceCount} device(s) but this MPI job has {world.Size} rank(s); start one rank per device "
                + $"(palmc launch -np {mesh.DeviceCount} -- ..., or mpirun -np {mesh.DeviceCount} ...)");
        _world = world;
        Mesh = mesh;
        Rank = world.Rank;
        _allAxes = mesh.AxisNames;
        _meshKey = mesh.ToString();
    }

    public MeshShape Mesh { get; }

    public int Rank { get; }

    public Tensor AllGather(Tensor x, long dim, string[] axes)
    {
        if (axes.Length == 0)
            return x.alias();
        var g = GetGroup(axes);
        dim = CollectiveArgs.NormalizeDim(x, dim, nameof(dim));
        if (g.Size == 1)
            return x.alias();
        using var _ = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var send = x.contiguous();
        var recv = torch.empty([g.Size, .. x.shape], x.dtype);
        _world.Api.Allgather(Ptr(send), Ptr(recv), ByteCount(send), MpiType.Byte, g.Comm);
        var shape = x.shape.ToArray();
        shape[dim] *= g.Size;
        // [g, ...x] in group order: along dim 0 that is already the concatenation; along another dim, moving the member
        // axis next to it and merging the two copies once (reshape of a non-contiguous view).
        var result = dim == 0 ? recv.reshape(shape) : recv.movedim([0], [dim]).reshape(shape);
        return result.MoveToOuterDisposeScope();
    }

    public Tensor ReduceScatter(Tensor x, long dim, string[] axes)
    {
        if (axes.Length == 0)
            return x.alias();
        var g = GetGroup(axes);
        dim = CollectiveArgs.NormalizeDim(x, dim, nameof(dim));
        long chunk = CollectiveArgs.ChunkSize(x, dim, g.Size, "ReduceScatter");
        if (g.Size == 1)
            return x.alias();
        using var _ = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var (type, sumDtype) = SumType(x.dtype, "ReduceScatter");
        // MPI scatters contiguous blocks of the leading axis: bring dim to the front (a copy unless dim is 0).
        var send = (dim == 0 ? x : x.movedim([dim], [0])).to_type(sumDtype).contiguous();
        var recvShape = send.shape.ToArray();
        recvShape[0] = chunk;
        var recv = torch.empty(recvShape, sumDtype);
        _world.Api.ReduceScatterBlock(Ptr(send), Ptr(recv), Count(recv), type, MpiOp.Sum, g.Comm);
        var result = (dim == 0 ? recv : recv.movedim([0], [dim])).to_type(x.dtype);
        return result.MoveToOuterDisposeScope();
    }

    public Tensor AllReduce(Tensor x, string[] axes)
    {
        if (axes.Length == 0)
            return x.alias();
        var g = GetGroup(axes);
        if (g.Size == 1)
            return x.alias();
        using var _ = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var (type, sumDtype) = SumType(x.dtype, "AllReduce");
        // A fresh contiguous buffer (the result), reduced in place: MPI_IN_PLACE, no second buffer.
        var buffer = sumDtype != x.dtype ? x.to_type(sumDtype).contiguous() : x.is_contiguous() ? x.clone() : x.contiguous();
        _world.Api.AllreduceInPlace(Ptr(buffer), Count(buffer), type, MpiOp.Sum, g.Comm);
        return buffer.to_type(x.dtype).MoveToOuterDisposeScope();
    }

    public Tensor AllToAll(Tensor x, long splitDim, long concatDim, string[] axes)
    {
        if (axes.Length == 0)
            return x.alias();
        var g = GetGroup(axes);
        splitDim = CollectiveArgs.NormalizeDim(x, splitDim, nameof(splitDim));
        concatDim = CollectiveArgs.NormalizeDim(x, concatDim, nameof(concatDim));
        long chunk = CollectiveArgs.ChunkSize(x, splitDim, g.Size, "AllToAll");
        if (g.Size == 1)
            return x.alias();
        using var _ = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        // Block j of the send buffer is chunk j along splitDim: bring splitDim to the front (a copy unless it is 0).
        var send = (splitDim == 0 ? x : x.movedim([splitDim], [0])).contiguous();
        var recv = torch.empty(send.shape, x.dtype);
        _world.Api.Alltoall(Ptr(send), Ptr(recv), ByteCount(send) / g.Size, MpiType.Byte, g.Comm);
        // recv = [g·chunk, rest...], block j from member j. As [g, chunk, rest...], put chunk back at splitDim, then
        // the member axis just before concatDim and merge them: concatenation in group order (one copy).
        var rest = send.shape.Skip(1).ToArray();
        var chunks = recv.view([g.Size, chunk, .. rest]).movedim([1], [splitDim + 1]);
        var shape = chunks.shape.Skip(1).ToArray();
        shape[concatDim] *= g.Size;
        return chunks.movedim([0], [concatDim]).reshape(shape).MoveToOuterDisposeScope();
    }

    public void Barrier()
    {
        if (Mesh.DeviceCount > 1)
            _world.Barrier();
    }

    public void Dispose() { }   // sub-communicators belong to the world (freed at finalize), shared by later meshes' collectives

    private sealed record Group(MpiComm Comm, int Index, int Size);

    private Group GetGroup(string[] axes)
    {
        ArgumentNullException.ThrowIfNull(axes);
        var key = string.Join('\u0001', axes);
        if (!_groups.TryGetValue(key, out var g))
        {
            var members = Mesh.GroupMembers(Rank, axes);   // validates the axes
            int index = (int)Mesh.GroupIndex(Rank, axes);
            // Collective over the world: every rank reaches its first use of these axes at the same point (SPMD).
            var comm = members.Length == 1 ? default : _world.Split($"{_meshKey}\u0002{key}", members[0], index);
            _groups[key] = g = new Group(comm, index, members.Length);
        }
        return g;
    }

    private static (MpiType Type, ScalarType SumDtype) SumType(ScalarType dtype, string op) => dtype switch
    {
        ScalarType.Float32 => (MpiType.Float32, dtype),
        ScalarType.Float64 => (MpiType.Float64, dtype),
        ScalarType.Int32 => (MpiType.Int32, dtype),
        ScalarType.Int64 => (MpiType.Int64, dtype),
        ScalarType.BFloat16 or ScalarType.Float16 => (MpiType.Float32, ScalarType.Float32),   // MPI has no 16-bit float SUM
        _ => throw new NotSupportedException($"{op} over MPI: cannot sum {dtype} tensors (float32, float64, bfloat16, float16, int32 and int64 can be summed)."),
    };

    private static nint Ptr(Tensor t) => Native.TensorMemory.Address(t);

    private static int Count(Tensor t) => t.numel() <= int.MaxValue ? (int)t.numel()
        : throw new NotSupportedException($"a collective over {t.numel()} elements: MPI counts are 32-bit; split the tensor.");

    private static int ByteCount(Tensor t)
    {
        long bytes = t.numel() * t.element_size();
        return bytes <= int.MaxValue ? (int)bytes
            : throw new NotSupportedException($"a collective moving {bytes} bytes per member: MPI counts are 32-bit; split the tensor.");
    }

}
