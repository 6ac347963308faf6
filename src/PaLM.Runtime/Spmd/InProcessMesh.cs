using System.Runtime.ExceptionServices;
using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>
/// Runs an SPMD body on a simulated device mesh inside this process: one dedicated thread per device, with
/// collectives that exchange tensors through shared memory. This is how sharded programs are tested and run on one machine.
/// </summary>
public static class InProcessMesh
{
    private const int StackSize = 16 * 1024 * 1024;   // generated code can nest deeply (repeat bodies, long methods)

    /// <summary>
    /// Runs <paramref name="body"/> once per device of <paramref name="mesh"/>, each on its own thread, and returns the
    /// results indexed by rank. Each device thread gets <paramref name="threadsPerDevice"/> intra-op threads (default:
    /// the processor count divided among the devices, at least 1) so devices do not fight over cores. If any device
    /// throws, the others are released from their collectives and the first failure is rethrown as it was thrown.
    /// Tensors returned by the body must outlive the body's dispose scopes (see <see cref="Rt.Keep"/>).
    /// </summary>
    public static T[] Run<T>(MeshShape mesh, Func<DeviceContext, T> body, int? threadsPerDevice = null)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        ArgumentNullException.ThrowIfNull(body);
        if (threadsPerDevice is < 1)
            throw new ArgumentOutOfRangeException(nameof(threadsPerDevice), threadsPerDevice, "A device needs at least one thread.");
        int threads = threadsPerDevice ?? Math.Max(1, Environment.ProcessorCount / mesh.DeviceCount);

        Rt.Initialize();                                 // load failures surface here, on the caller's thread
        int callerThreads = torch.get_num_threads();

        var results = new T[mesh.DeviceCount];
        using var world = new World(mesh);
        // One device's whole run: its own intra-op threads, its collectives, failures handed to the others.
        void RunDevice(int rank)
        {
            try
            {
                SetThreadsOnThisThread(threads);
                using var comm = new Collectives(world, rank);
                results[rank] = body(new DeviceContext(comm));
            }
            catch (Exception e)
            {
                world.Fail(e);
            }
        }
        if (mesh.DeviceCount == 1 && IsProcessMainThread())
        {
            // One device, called from the process's first thread: run it right here. glibc serves that thread from
            // its main heap, which keeps freed blocks for reuse (see Native/HeapTuning); any other thread gets an
            // arena that returns blocks over 64 MiB to the kernel on free, so every step would page-fault its large
            // activations in afresh (measured: 338 MB of fresh pages a palm-cpu step, docs/performance.md).
            RunDevice(0);
        }
        else
        {
            var devices = new Thread[mesh.DeviceCount];
            for (int r = 0; r < devices.Length; r++)
            {
                int rank = r;
                devices[r] = new Thread(() => RunDevice(rank), StackSize) { Name = $"palm-device-{rank}", IsBackground = true };
            }
            foreach (var t in devices)
                t.Start();
            foreach (var t in devices)
                t.Join();
        }

        // Device threads moved libtorch's process-wide default (see SetThreadsOnThisThread); give it back the caller's
        // count. This thread's own count is unchanged by that.
        torch.set_num_threads(callerThreads);
        world.FirstFailure?.Throw();
        return results;
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "gettid")]
    private static extern int GetTid();

    /// <summary>Whether the calling thread is the process's initial thread (Linux: its thread id is the process id).</summary>
    private static bool IsProcessMainThread()
    {
        if (!OperatingSystem.IsLinux()) return false;
        try { return GetTid() == Environment.ProcessId; }
        catch (EntryPointNotFoundException) { return false; }
    }

    // Finding (TorchSharp 0.107 / libtorch 2.10 CPU, OpenMP build, checked on this machine; pinned down by
    // InProcessMeshThreadCountTests): torch.set_num_threads is PER THREAD. libtorch's at::set_num_threads calls
    // omp_set_num_threads (the nthreads-var ICV of the calling thread; MKL builds also mkl_set_num_threads_local), so
    // two threads can run with different intra-op counts at once. But it also stores the count in a process-wide atomic, and a
    // thread's first parallel op or get_num_threads (lazy_init_num_threads, once per thread) re-applies that atomic
    // to the thread, overwriting whatever the thread set before. So: set, force the lazy init, set again. After that
    // the thread keeps its own count whatever other threads set.
    private static void SetThreadsOnThisThread(int threads)
    {
        Rt.Initialize(threads);
        _ = torch.get_num_threads();   // the lazy per-thread init, which would otherwise undo the next line later
        torch.set_num_threads(threads);
    }

    /// <summary>What the device threads of one Run share: the mesh, the rendezvous of each group, failure and cancellation.</summary>
    private sealed class World(MeshShape mesh) : IDisposable
    {
        private readonly object _gate = new();
        private readonly Dictionary<string, Rendezvous> _rendezvous = new(StringComparer.Ordinal);
        private readonly CancellationTokenSource _cancel = new();
        private ExceptionDispatchInfo? _first;

        public MeshShape Mesh { get; } = mesh;
        public CancellationToken Cancelled => _cancel.Token;

        public ExceptionDispatchInfo? FirstFailure
        {
            get { lock (_gate) return _first; }
        }

        // The first failure wins; it is recorded before anyone is cancelled, so the cancellations it causes never do.
        public void Fail(Exception e)
        {
            lock (_gate)
                _first ??= ExceptionDispatchInfo.Capture(e);
            _cancel.Cancel();
        }

        public Rendezvous GetRendezvous(string key, int size)
        {
            lock (_gate)
            {
                if (!_rendezvous.TryGetValue(key, out var rv))
                    _rendezvous[key] = rv = new Rendezvous(size);
                return rv;
            }
        }

        public void Dispose()
        {
            foreach (var rv in _rendezvous.Values)
                rv.Barrier.Dispose();
            _cancel.Dispose();
        }
    }

    /// <summary>One group's meeting point: a barrier and one slot per member for what it posts.</summary>
    private sealed class Rendezvous(int size)
    {
        public Barrier Barrier { get; } = new(size);
        public Tensor?[] Tensors { get; } = new Tensor?[size];
        public OpTag[] Tags { get; } = new OpTag[size];
    }

    /// <summary>What a member says it is doing, so that mismatched SPMD call sequences fail loudly instead of mixing data.</summary>
    private readonly record struct OpTag(string Op, long Dim, long Dim2);

    /// <summary>One device's view of a group: the shared rendezvous and this device's position in it.</summary>
    private sealed record Group(Rendezvous Rendezvous, int Index, int Size);

    /// <summary>The in-process collectives of one device.</summary>
    private sealed class Collectives(World world, int rank) : ICollectives
    {
        private readonly Dictionary<string, Group> _groups = new(StringComparer.Ordinal);   // this thread only
        private readonly string[] _allAxes = world.Mesh.AxisNames;

        public MeshShape Mesh => world.Mesh;
        public int Rank => rank;

        public Tensor AllGather(Tensor x, long dim, string[] axes)
        {
            if (axes.Length == 0)
                return x.alias();
            var g = GetGroup(axes);
            dim = CollectiveArgs.NormalizeDim(x, dim, nameof(dim));
            if (g.Size == 1)
                return x.alias();
            return Exchange(g, x, new("AllGather", dim, 0), xs => torch.cat(xs, dim));
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
            return Exchange(g, x, new("ReduceScatter", dim, 0), xs =>
            {
                CheckSameShapes(xs, "ReduceScatter");
                return SumInOrder(xs, t => t.narrow(dim, g.Index * chunk, chunk));
            });
        }

        public Tensor AllReduce(Tensor x, string[] axes)
        {
            if (axes.Length == 0)
                return x.alias();
            var g = GetGroup(axes);
            if (g.Size == 1)
                return x.alias();
            return Exchange(g, x, new("AllReduce", 0, 0), xs =>
            {
                CheckSameShapes(xs, "AllReduce");
                return SumInOrder(xs, t => t);
            });
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
            return Exchange(g, x, new("AllToAll", splitDim, concatDim), xs =>
            {
                CheckSameShapes(xs, "AllToAll");
                using var scope = torch.NewDisposeScope();
                var received = xs.Select(t => t.narrow(splitDim, g.Index * chunk, chunk)).ToArray();
                return torch.cat(received, concatDim).MoveToOuterDisposeScope();
            });
        }

        public void Barrier()
        {
            if (world.Mesh.DeviceCount == 1)
                return;
            Exchange(GetGroup(_allAxes), null, new("Barrier", 0, 0), _ => (Tensor?)null);
        }

        public void Dispose() { }

        // Post x, wait for the whole group, compute this member's result from everyone's posts, then wait again so
        // that no member's input is released or replaced while another may still be reading it.
        // Only the first wait is cancellable. A cancelled first wait withdraws this member's signal, so the phase cannot
        // complete and nobody reads its post; once the first wait has completed (then .NET's Barrier ignores
        // cancellation), every member is past it and reaches the second wait whatever happens in between, so that
        // wait needs no cancellation, and a device released by a failure elsewhere never frees a tensor another is reading.
        private TResult Exchange<TResult>(Group g, Tensor? x, OpTag tag, Func<Tensor[], TResult> compute)
        {
            var rv = g.Rendezvous;
            rv.Tensors[g.Index] = x;
            rv.Tags[g.Index] = tag;
            try
            {
                rv.Barrier.SignalAndWait(world.Cancelled);
            }
            catch
            {
                rv.Tensors[g.Index] = null;
                throw;
            }
            try
            {
                for (int j = 0; j < g.Size; j++)
                {
                    if (rv.Tags[j] != tag)
                        throw new InvalidOperationException(
                            $"Mismatched collectives on device {rank}: group member {g.Index} called {Describe(tag)} while member {j} called "
                            + $"{Describe(rv.Tags[j])}. Every member of a group must make the same collective calls in the same order.");
                }
                using (torch.no_grad())   // autodiff is an IR phase; a graph reaching into other devices' tensors would be wrong
                    return compute(rv.Tensors!);
            }
            finally
            {
                rv.Barrier.SignalAndWait();
                rv.Tensors[g.Index] = null;
            }
        }

        private Group GetGroup(string[] axes)
        {
            ArgumentNullException.ThrowIfNull(axes);
            var key = string.Join('\u0001', axes);
            if (!_groups.TryGetValue(key, out var g))
            {
                var members = world.Mesh.GroupMembers(rank, axes);   // validates the axes
                int index = (int)world.Mesh.GroupIndex(rank, axes);
                // Members agree on the key: the axes in the order listed, and the group's first member (fixed coordinates).
                var rv = world.GetRendezvous($"{key}\u0002{members[0]}", members.Length);
                _groups[key] = g = new Group(rv, index, members.Length);
            }
            return g;
        }

        private void CheckSameShapes(Tensor[] xs, string op)
        {
            for (int j = 1; j < xs.Length; j++)
            {
                if (xs[j].dtype != xs[0].dtype || !xs[j].shape.SequenceEqual(xs[0].shape))
                    throw new InvalidOperationException(
                        $"{op} on device {rank}: group members 0 and {j} posted {xs[0].dtype}[{string.Join(", ", xs[0].shape)}] "
                        + $"and {xs[j].dtype}[{string.Join(", ", xs[j].shape)}]; they must match.");
            }
        }

        // (part(x0) + part(x1)) + part(x2) + ...: the same order, dtype and kernels on every member, so bitwise-equal sums.
        private static Tensor SumInOrder(Tensor[] xs, Func<Tensor, Tensor> part)
        {
            using var scope = torch.NewDisposeScope();
            var sum = part(xs[0]).add(part(xs[1]), HeldScalars.One);
            for (int j = 2; j < xs.Length; j++)
                sum.add_(part(xs[j]), HeldScalars.One);
            return sum.MoveToOuterDisposeScope();
        }

        private static string Describe(OpTag t) => t.Op switch
        {
            "AllToAll" => $"AllToAll(split {t.Dim}, concat {t.Dim2})",
            "AllGather" or "ReduceScatter" => $"{t.Op}(dim {t.Dim})",
            _ => t.Op,
        };
    }
}
