namespace PaLM.Runtime.Distributed;

/// <summary>An MPI communicator as the <see cref="MpiApi"/> that made it knows it (a pointer in Open MPI, an int in MPICH).</summary>
public readonly record struct MpiComm(nint Handle);

/// <summary>The element types the collectives move or sum.</summary>
public enum MpiType { Byte, Float32, Float64, Int32, Int64 }

/// <summary>The reductions used.</summary>
public enum MpiOp { Sum, Max, Min }

/// <summary>An MPI call that returned an error code.</summary>
public sealed class MpiException(string call, int code, string text)
    : Exception($"{call} failed with MPI error {code}: {text}")
{
    public int Code { get; } = code;
}

/// <summary>
/// The MPI calls palmc makes, behind one seam: the only place that knows how an MPI implementation spells its handles.
/// Open MPI's handles are addresses of exported globals (<see cref="OpenMpi"/>); MPICH's are integers, so adding it
/// means another subclass that maps <see cref="MpiComm"/>, <see cref="MpiType"/> and <see cref="MpiOp"/> to its
/// integers and declares its own P/Invoke signatures. Buffers are native addresses (tensor memory), counts are elements.
/// Every call throws <see cref="MpiException"/> on a non-zero return (with the default error handler,
/// MPI_ERRORS_ARE_FATAL, Open MPI aborts the job before returning one).
/// </summary>
public abstract class MpiApi
{
    /// <summary>The implementation and library, e.g. "Open MPI 4.1.4 (libmpi.so.40)".</summary>
    public abstract string Name { get; }

    /// <summary>MPI_COMM_WORLD.</summary>
    public abstract MpiComm World { get; }

    /// <summary>MPI_Init_thread requesting MPI_THREAD_SERIALIZED; returns the level provided (0 single .. 3 multiple).</summary>
    public abstract int InitThread();

    public abstract bool Initialized();

    public abstract bool Finalized();

    public abstract void FinalizeMpi();

    /// <summary>MPI_Abort: ends every process of the job; does not return.</summary>
    public abstract void Abort(MpiComm comm, int code);

    public abstract int Rank(MpiComm comm);

    public abstract int Size(MpiComm comm);

    /// <summary>MPI_Comm_split: members with the same <paramref name="color"/> form a communicator, ranked by <paramref name="key"/>.</summary>
    public abstract MpiComm Split(MpiComm comm, int color, int key);

    public abstract void Free(MpiComm comm);

    public abstract void Barrier(MpiComm comm);

    /// <summary>MPI_Allgather: <paramref name="count"/> elements from each member, concatenated in rank order into <paramref name="recv"/>.</summary>
    public abstract void Allgather(nint send, nint recv, int count, MpiType type, MpiComm comm);

    /// <summary>MPI_Allreduce in place: <paramref name="buffer"/> holds this member's input and receives the result.</summary>
    public abstract void AllreduceInPlace(nint buffer, int count, MpiType type, MpiOp op, MpiComm comm);

    /// <summary>MPI_Reduce_scatter_block: reduces <c>size·count</c> elements and keeps block <c>rank</c> (<paramref name="count"/> elements).</summary>
    public abstract void ReduceScatterBlock(nint send, nint recv, int count, MpiType type, MpiOp op, MpiComm comm);

    /// <summary>MPI_Alltoall: block j (<paramref name="count"/> elements) of <paramref name="send"/> goes to member j; block j of <paramref name="recv"/> comes from it.</summary>
    public abstract void Alltoall(nint send, nint recv, int count, MpiType type, MpiComm comm);

    /// <summary>MPI_Get_processor_name.</summary>
    public abstract string ProcessorName();

    /// <summary>The first implementation that loads here (today: Open MPI's libmpi.so.40), or an explanation of why none does.</summary>
    public static MpiApi Load() => OpenMpi.Open();
}
