using TorchSharp;

namespace PaLM.Runtime.Distributed;

/// <summary>
/// One device per process of an MPI job: the body runs once, on the calling thread, as device <c>world.Rank</c>, with
/// <see cref="MpiCollectives"/>. The mesh must have exactly one device per rank.
/// </summary>
public sealed class MpiBackend(MpiWorld world) : IMeshBackend
{
    public MpiWorld World { get; } = world ?? throw new ArgumentNullException(nameof(world));

    public string Name => "mpi";

    public bool InProcess => false;

    /// <summary>
    /// When true (the default), an exception escaping the body ends the whole job (MPI_Abort) after printing
    /// <c>rank R: error: ...</c>: the other ranks would otherwise wait forever in their next collective.
    /// </summary>
    public bool AbortOnFailure { get; init; } = true;

    public void Run(MeshShape mesh, Action<DeviceContext> body, int? threadsPerDevice = null)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        ArgumentNullException.ThrowIfNull(body);
        int threads = threadsPerDevice ?? World.ThreadsPerRank;
        Rt.Initialize(threads);
        // Ranks measuring matmul kernels apart could choose differently, and replicated computations would then differ
        // between ranks by float rounding: untuned products (BLAS, or oneDNN everywhere under PALMC_GEMM=onednn).
        if (World.Size > 1) Gemm.TuningAllowed = false;
        _ = torch.get_num_threads();   // libtorch's lazy per-thread init (see InProcessMesh.SetThreadsOnThisThread)
        torch.set_num_threads(threads);
        try
        {
            using var comm = new MpiCollectives(World, mesh);
            body(new DeviceContext(comm));
        }
        catch (Exception e) when (AbortOnFailure)
        {
            World.Abort($"rank {World.Rank}: error: {e.GetType().Name}: {e.Message}" +
                (Environment.GetEnvironmentVariable("PALMC_DEBUG") is null ? "" : "\n" + e));
        }
    }
}
