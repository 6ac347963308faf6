using System.Runtime.InteropServices;

namespace PaLM.Runtime.Native;

/// <summary>Work split over a team's workers by index; an exception is kept for the caller (it cannot cross the
/// native frames of an OpenMP worker).</summary>
internal abstract class TeamWork
{
    public System.Runtime.ExceptionServices.ExceptionDispatchInfo? Failure { get; private set; }

    public void Work(int worker, int workers)
    {
        try
        {
            Run(worker, workers);
        }
        catch (Exception e)
        {
            lock (this) Failure ??= System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e);
        }
    }

    /// <summary>Worker <paramref name="worker"/>'s share of <paramref name="workers"/>.</summary>
    protected abstract void Run(int worker, int workers);
}

/// <summary>
/// Runs a fused loop on libtorch's own OpenMP team, as <c>at::parallel_for</c> does (<c>GOMP_parallel</c> with the
/// calling thread as thread 0).
/// <para>
/// Why not .NET's thread pool: after every parallel libtorch op its OpenMP workers spin for a while waiting for the next
/// region (libgomp's default), so on a machine with as many cores as threads a pool thread started right after an op
/// competes with a spinning worker for the second core. Measured on palm-cpu's step: fused loops on two pool threads
/// ran no faster than on one. On the team, the spinning worker picks the loop up at once.
/// </para>
/// <para>
/// The library is the libgomp that libtorch loaded (found in /proc/self/maps, so its hashed file name needs no
/// hard-coding). Where there is none (another OpenMP, another OS), <see cref="Run"/> uses the thread pool.
/// </para>
/// </summary>
internal static unsafe class OpenMpTeam
{
    private static readonly Lazy<(nint Parallel, nint ThreadNum, nint NumThreads)> s_gomp = new(Find);

    /// <summary>
    /// Elements below which a loop runs on the calling thread alone: libtorch's own grain (<c>at::internal::GRAIN_SIZE</c>),
    /// under which its ops do not start a parallel region either.
    /// <para>
    /// Why: waking a team worker that has stopped spinning costs far more than such a loop (on this VM a palm-tiny
    /// fused loop over 32K floats took 1.5-1.8 ms on two workers; libtorch's own ops at that size stay on one thread, so
    /// the worker is asleep by then).
    /// </para>
    /// </summary>
    public const long GrainElements = 32768;

    /// <summary>How many of <paramref name="available"/> threads a loop over <paramref name="elements"/> elements gets:
    /// one per <see cref="GrainElements"/>, at least one.</summary>
    public static int ThreadsFor(long elements, int available) =>
        (int)Math.Clamp(Math.Min(available, elements / GrainElements), 1, 256);

    /// <summary>Runs <paramref name="work"/> on <paramref name="threads"/> workers (the team, else the thread pool, or
    /// inline for one) and rethrows the first exception a worker caught.</summary>
    public static void Run(TeamWork work, int threads)
    {
        if (threads <= 1) work.Work(0, 1);
        else if (!TryRun(work, threads))
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t => work.Work(t, threads));
        work.Failure?.Throw();
    }

    private static bool TryRun(TeamWork work, int threads)
    {
        var (parallel, _, _) = s_gomp.Value;
        if (parallel == 0) return false;
        var handle = GCHandle.Alloc(work);
        try
        {
            ((delegate* unmanaged<delegate* unmanaged<void*, void>, void*, uint, uint, void>)parallel)(
                &Worker, (void*)GCHandle.ToIntPtr(handle), (uint)threads, 0);
        }
        finally
        {
            handle.Free();
        }
        return true;
    }

    [UnmanagedCallersOnly]
    private static void Worker(void* data)
    {
        var (_, threadNum, numThreads) = s_gomp.Value;
        var job = (TeamWork)GCHandle.FromIntPtr((nint)data).Target!;
        job.Work(((delegate* unmanaged<int>)threadNum)(), ((delegate* unmanaged<int>)numThreads)());
    }

    private static (nint, nint, nint) Find()
    {
        // No libgomp (another OpenMP, another OS): no team to borrow, the caller uses the thread pool.
        if (!LoadedLibraries.TryFind(f => f.StartsWith("libgomp", StringComparison.Ordinal), out var lib)) return default;
        return NativeLibrary.TryGetExport(lib, "GOMP_parallel", out var parallel)
            && NativeLibrary.TryGetExport(lib, "omp_get_thread_num", out var threadNum)
            && NativeLibrary.TryGetExport(lib, "omp_get_num_threads", out var numThreads)
            ? (parallel, threadNum, numThreads) : default;
    }
}
