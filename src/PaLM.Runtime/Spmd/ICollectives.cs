using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>
/// Collective operations among the devices of a mesh, as seen from one device. Implemented in-process by
/// <see cref="InProcessMesh"/> (one thread per device) and later by a multi-process backend (Open MPI).
/// A group over <c>axes</c> is the set of devices sharing all coordinates outside <c>axes</c>; a member's position in
/// it is <see cref="MeshShape.GroupIndex"/>. Every member of a group must make the same collective calls in the same
/// order (SPMD). Empty <c>axes</c> is the identity (<c>x.alias()</c>). Results are new tensors owned by the calling
/// thread's current dispose scope; sums add in group order in the input dtype, so every member gets bitwise-equal results.
/// </summary>
public interface ICollectives : IDisposable
{
    /// <summary>The mesh this device belongs to.</summary>
    MeshShape Mesh { get; }

    /// <summary>This device's rank in <see cref="Mesh"/>.</summary>
    int Rank { get; }

    /// <summary>Concatenates the group members' <paramref name="x"/> along <paramref name="dim"/>, in group order.</summary>
    Tensor AllGather(Tensor x, long dim, string[] axes);

    /// <summary>Sums <paramref name="x"/> over the group, then keeps this member's chunk along <paramref name="dim"/> (whose size the group size must divide).</summary>
    Tensor ReduceScatter(Tensor x, long dim, string[] axes);

    /// <summary>Sums <paramref name="x"/> over the group.</summary>
    Tensor AllReduce(Tensor x, string[] axes);

    /// <summary>
    /// Splits <paramref name="x"/> along <paramref name="splitDim"/> into group-size chunks, sends chunk j to member j,
    /// and concatenates the chunks received along <paramref name="concatDim"/> in group order.
    /// </summary>
    Tensor AllToAll(Tensor x, long splitDim, long concatDim, string[] axes);

    /// <summary>Waits until every device of the mesh has reached this call.</summary>
    void Barrier();
}
