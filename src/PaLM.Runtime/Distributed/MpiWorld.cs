using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PaLM.Runtime.Distributed;

/// <summary>
/// This process's membership of an MPI job (one per process): initialization, rank and size, the sub-communicators
/// of mesh groups, small agreement exchanges, abort and finalize. Only one thread at a time may call into it
/// (MPI_THREAD_SERIALIZED); palmc calls MPI from the thread that runs the device body.
/// </summary>
public sealed class MpiWorld : IDisposable
{
    private static readonly object s_gate = new();
    private static MpiWorld? s_current;

    private readonly Dictionary<(int Color, string Key), MpiComm> _splits = new();
    private bool _finalized;

    private MpiWorld(MpiApi api)
    {
        Api = api;
        ThreadLevel = api.InitThread();
        if (ThreadLevel < 2)
        {
            api.FinalizeMpi();
            throw new InvalidOperationException($"{api.Name} provides thread level {ThreadLevel}; palmc needs MPI_THREAD_SERIALIZED (2) or higher.");
        }
        Rank = api.Rank(api.World);
        Size = api.Size(api.World);
        Host = api.ProcessorName();
        LocalSize = int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_SIZE"), out var n) && n > 0 ? n : 1;
    }

    /// <summary>
    /// Joins the MPI job this process was started in (by mpirun), or returns the world already joined. Started without
    /// mpirun, Open MPI makes a job of one process (a singleton).
    /// </summary>
    public static MpiWorld Join()
    {
        lock (s_gate)
            return s_current ??= new MpiWorld(MpiApi.Load());
    }

    /// <summary>The world joined by <see cref="Join"/>, if any.</summary>
    public static MpiWorld? Current
    {
        get { lock (s_gate) return s_current; }
    }

    /// <summary>Whether this process looks like one rank of an mpirun job (Open MPI sets OMPI_COMM_WORLD_SIZE).</summary>
    public static bool StartedByMpirun => Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is { Length: > 0 };

    public MpiApi Api { get; }

    /// <summary>This process's rank in MPI_COMM_WORLD.</summary>
    public int Rank { get; }

    /// <summary>The number of processes in the job.</summary>
    public int Size { get; }

    /// <summary>Processes of this job on this host (OMPI_COMM_WORLD_LOCAL_SIZE; 1 if unset).</summary>
    public int LocalSize { get; }

    /// <summary>MPI_Get_processor_name: the host this rank runs on.</summary>
    public string Host { get; }

    /// <summary>The thread level MPI provided.</summary>
    public int ThreadLevel { get; }

    /// <summary>Intra-op threads for this rank: the host's cores divided among the ranks on it, at least 1.</summary>
    public int ThreadsPerRank => Math.Max(1, Environment.ProcessorCount / LocalSize);

    /// <summary>
    /// The sub-communicator of the ranks that pass the same <paramref name="color"/> for <paramref name="key"/>, ordered by
    /// <paramref name="order"/> (MPI_Comm_split; collective over the world, so every rank must ask for the same keys in the
    /// same order; cached per key).
    /// </summary>
    public MpiComm Split(string key, int color, int order)
    {
        if (_splits.TryGetValue((color, key), out var c))
            return c;
        c = Api.Split(Api.World, color, order);
        _splits[(color, key)] = c;
        return c;
    }

    public void Barrier() => Api.Barrier(Api.World);

    /// <summary>Every rank's <paramref name="mine"/> (all of the same length), in rank order.</summary>
    public byte[][] AllGather(byte[] mine)
    {
        var all = new byte[mine.Length * Size];
        unsafe
        {
            fixed (byte* s = mine)
            fixed (byte* r = all)
                Api.Allgather((nint)s, (nint)r, mine.Length, MpiType.Byte, Api.World);
        }
        return Enumerable.Range(0, Size).Select(i => all.AsSpan(i * mine.Length, mine.Length).ToArray()).ToArray();
    }

    /// <summary>Every rank's value, in rank order.</summary>
    public long[] AllGather(long mine)
    {
        var bytes = AllGather(BitConverter.GetBytes(mine));
        return bytes.Select(b => BitConverter.ToInt64(b)).ToArray();
    }

    /// <summary>
    /// Sums <paramref name="t"/> (contiguous float32/float64/int32/int64, CPU) over every rank in place: one MPI_Allreduce
    /// with MPI_IN_PLACE on the tensor's own memory, no copy. What the collective benchmark times.
    /// </summary>
    public void AllReduceInPlace(TorchSharp.torch.Tensor t)
    {
        ArgumentNullException.ThrowIfNull(t);
        if (!t.is_contiguous()) throw new ArgumentException("AllReduceInPlace needs a contiguous tensor.", nameof(t));
        var type = t.dtype switch
        {
            TorchSharp.torch.ScalarType.Float32 => MpiType.Float32,
            TorchSharp.torch.ScalarType.Float64 => MpiType.Float64,
            TorchSharp.torch.ScalarType.Int32 => MpiType.Int32,
            TorchSharp.torch.ScalarType.Int64 => MpiType.Int64,
            _ => throw new NotSupportedException($"AllReduceInPlace: {t.dtype} (float32, float64, int32, int64 only)."),
        };
        Api.AllreduceInPlace(Native.TensorMemory.Address(t), checked((int)t.numel()), type, MpiOp.Sum, Api.World);
    }

    /// <summary>
    /// Ends the whole job now: writes <paramref name="message"/> to stderr (flushed) and calls MPI_Abort, which makes
    /// mpirun kill every rank. Does not return.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public void Abort(string message, int code = 1)
    {
        try
        {
            Console.Out.Flush();
            Console.Error.WriteLine(message);
            Console.Error.Flush();
        }
        catch (IOException) { }
        Api.Abort(Api.World, code);
        Environment.Exit(code);   // not reached: MPI_Abort ends the process
    }

    /// <summary>MPI_Finalize (after freeing the sub-communicators); every rank must call it. Idempotent.</summary>
    public void Dispose()
    {
        lock (s_gate)
        {
            if (_finalized) return;
            _finalized = true;
            foreach (var c in _splits.Values)
                Api.Free(c);
            _splits.Clear();
            if (!Api.Finalized())
                Api.FinalizeMpi();
        }
    }
}
