namespace PaLM.Runtime;

/// <summary>
/// Where the devices of a mesh live and how an SPMD body is run on them: every device of the mesh in this process
/// (<see cref="InProcessBackend"/>, the default), or one device per process of an MPI job
/// (<see cref="Distributed.MpiBackend"/>). The body is the same per-device program either way; only the collectives
/// behind <see cref="DeviceContext.Comm"/> differ.
/// </summary>
public interface IMeshBackend
{
    /// <summary>"inprocess" or "mpi".</summary>
    string Name { get; }

    /// <summary>Whether every device of the mesh runs in this process (so device bodies can share memory).</summary>
    bool InProcess { get; }

    /// <summary>
    /// Runs <paramref name="body"/> on each device of <paramref name="mesh"/> that this process holds, with
    /// <paramref name="threadsPerDevice"/> intra-op threads each (default: the cores divided among the devices on this host).
    /// </summary>
    void Run(MeshShape mesh, Action<DeviceContext> body, int? threadsPerDevice = null);
}

/// <summary>Every device in this process, one thread each: <see cref="InProcessMesh.Run{T}"/>.</summary>
public sealed class InProcessBackend : IMeshBackend
{
    private InProcessBackend() { }

    public static InProcessBackend Instance { get; } = new();

    public string Name => "inprocess";

    public bool InProcess => true;

    public void Run(MeshShape mesh, Action<DeviceContext> body, int? threadsPerDevice = null) =>
        InProcessMesh.Run(mesh, d => { body(d); return 0; }, threadsPerDevice);
}
