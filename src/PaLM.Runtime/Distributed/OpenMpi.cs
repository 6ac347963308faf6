using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;

namespace PaLM.Runtime.Distributed;

/// <summary>
/// Open MPI (4.x, libmpi.so.40) through P/Invoke. Its handles are the addresses of exported globals: MPI_COMM_WORLD is
/// <c>&amp;ompi_mpi_comm_world</c>, MPI_FLOAT <c>&amp;ompi_mpi_float</c>, MPI_SUM <c>&amp;ompi_mpi_op_sum</c>; they are
/// resolved once with <see cref="NativeLibrary.GetExport"/>. MPI_IN_PLACE is <c>(void*)1</c>.
/// </summary>
internal sealed class OpenMpi : MpiApi
{
    private const string Lib = "libmpi.so.40";
    private const int ThreadSerialized = 2;          // MPI_THREAD_SERIALIZED in Open MPI's mpi.h
    private const int MaxProcessorName = 256;        // MPI_MAX_PROCESSOR_NAME
    private const int MaxErrorString = 256;          // MPI_MAX_ERROR_STRING
    private static readonly nint s_inPlace = 1;      // MPI_IN_PLACE

    private readonly nint _world;
    private readonly nint[] _types;
    private readonly nint[] _ops;

    private OpenMpi(nint lib)
    {
        nint Export(string name) => NativeLibrary.GetExport(lib, name);
        _world = Export("ompi_mpi_comm_world");
        _types = new nint[Enum.GetValues<MpiType>().Length];
        _types[(int)MpiType.Byte] = Export("ompi_mpi_byte");
        _types[(int)MpiType.Float32] = Export("ompi_mpi_float");
        _types[(int)MpiType.Float64] = Export("ompi_mpi_double");
        _types[(int)MpiType.Int32] = Export("ompi_mpi_int");
        _types[(int)MpiType.Int64] = Export("ompi_mpi_int64_t");
        _ops = new nint[Enum.GetValues<MpiOp>().Length];
        _ops[(int)MpiOp.Sum] = Export("ompi_mpi_op_sum");
        _ops[(int)MpiOp.Max] = Export("ompi_mpi_op_max");
        _ops[(int)MpiOp.Min] = Export("ompi_mpi_op_min");
        int major = 0, minor = 0;
        Check(MPI_Get_version(ref major, ref minor), "MPI_Get_version");
        Name = $"Open MPI (libmpi.so.40, MPI {major}.{minor})";
    }

    public static OpenMpi Open()
    {
        nint lib;
        try { lib = NativeLibrary.Load(Lib, typeof(OpenMpi).Assembly, DllImportSearchPath.SafeDirectories | DllImportSearchPath.System32); }
        catch (DllNotFoundException e)
        {
            throw new DllNotFoundException(
                $"cannot load {Lib} (Open MPI): {e.Message}. Install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev).", e);
        }
        return new OpenMpi(lib);
    }

    public override string Name { get; }

    public override MpiComm World => new(_world);

    public override int InitThread()
    {
        int provided = 0;
        Check(MPI_Init_thread(0, 0, ThreadSerialized, ref provided), "MPI_Init_thread");
        return provided;
    }

    public override bool Initialized()
    {
        int flag = 0;
        Check(MPI_Initialized(ref flag), "MPI_Initialized");
        return flag != 0;
    }

    public override bool Finalized()
    {
        int flag = 0;
        Check(MPI_Finalized(ref flag), "MPI_Finalized");
        return flag != 0;
    }

    public override void FinalizeMpi() => Check(MPI_Finalize(), "MPI_Finalize");

    public override void Abort(MpiComm comm, int code) => MPI_Abort(comm.Handle, code);

    public override int Rank(MpiComm comm)
    {
        int r = 0;
        Check(MPI_Comm_rank(comm.Handle, ref r), "MPI_Comm_rank");
        return r;
    }

    public override int Size(MpiComm comm)
    {
        int n = 0;
        Check(MPI_Comm_size(comm.Handle, ref n), "MPI_Comm_size");
        return n;
    }

    public override MpiComm Split(MpiComm comm, int color, int key)
    {
        nint sub = 0;
        Check(MPI_Comm_split(comm.Handle, color, key, ref sub), "MPI_Comm_split");
        return new(sub);
    }

    public override void Free(MpiComm comm)
    {
        var h = comm.Handle;
        Check(MPI_Comm_free(ref h), "MPI_Comm_free");
    }

    public override void Barrier(MpiComm comm) => Check(MPI_Barrier(comm.Handle), "MPI_Barrier");

    public override void Allgather(nint send, nint recv, int count, MpiType type, MpiComm comm) =>
        Check(MPI_Allgather(send, count, T(type), recv, count, T(type), comm.Handle), "MPI_Allgather");

    public override void AllreduceInPlace(nint buffer, int count, MpiType type, MpiOp op, MpiComm comm) =>
        Check(MPI_Allreduce(s_inPlace, buffer, count, T(type), _ops[(int)op], comm.Handle), "MPI_Allreduce");

    public override void ReduceScatterBlock(nint send, nint recv, int count, MpiType type, MpiOp op, MpiComm comm) =>
        Check(MPI_Reduce_scatter_block(send, recv, count, T(type), _ops[(int)op], comm.Handle), "MPI_Reduce_scatter_block");

    public override void Alltoall(nint send, nint recv, int count, MpiType type, MpiComm comm) =>
        Check(MPI_Alltoall(send, count, T(type), recv, count, T(type), comm.Handle), "MPI_Alltoall");

    public override string ProcessorName()
    {
        var buf = new byte[MaxProcessorName + 1];
        int len = 0;
        Check(MPI_Get_processor_name(buf, ref len), "MPI_Get_processor_name");
        return Encoding.UTF8.GetString(buf, 0, Math.Clamp(len, 0, MaxProcessorName));
    }

    private nint T(MpiType t) => _types[(int)t];

    private static void Check(int code, string call)
    {
        if (code == 0) return;
        var buf = new byte[MaxErrorString + 1];
        int len = 0;
        var text = MPI_Error_string(code, buf, ref len) == 0 ? Encoding.UTF8.GetString(buf, 0, Math.Clamp(len, 0, MaxErrorString)) : "(no description)";
        throw new MpiException(call, code, text);
    }

    // ---- libmpi.so.40: every handle is a pointer ----
    [DllImport(Lib)] private static extern int MPI_Init_thread(nint argc, nint argv, int required, ref int provided);
    [DllImport(Lib)] private static extern int MPI_Initialized(ref int flag);
    [DllImport(Lib)] private static extern int MPI_Finalized(ref int flag);
    [DllImport(Lib)] private static extern int MPI_Finalize();
    [DllImport(Lib)] private static extern int MPI_Abort(nint comm, int errorcode);
    [DllImport(Lib)] private static extern int MPI_Get_version(ref int version, ref int subversion);
    [DllImport(Lib)] private static extern int MPI_Comm_rank(nint comm, ref int rank);
    [DllImport(Lib)] private static extern int MPI_Comm_size(nint comm, ref int size);
    [DllImport(Lib)] private static extern int MPI_Comm_split(nint comm, int color, int key, ref nint newcomm);
    [DllImport(Lib)] private static extern int MPI_Comm_free(ref nint comm);
    [DllImport(Lib)] private static extern int MPI_Barrier(nint comm);
    [DllImport(Lib)] private static extern int MPI_Allgather(nint sendbuf, int sendcount, nint sendtype, nint recvbuf, int recvcount, nint recvtype, nint comm);
    [DllImport(Lib)] private static extern int MPI_Allreduce(nint sendbuf, nint recvbuf, int count, nint datatype, nint op, nint comm);
    [DllImport(Lib)] private static extern int MPI_Reduce_scatter_block(nint sendbuf, nint recvbuf, int recvcount, nint datatype, nint op, nint comm);
    [DllImport(Lib)] private static extern int MPI_Alltoall(nint sendbuf, int sendcount, nint sendtype, nint recvbuf, int recvcount, nint recvtype, nint comm);
    [DllImport(Lib)] private static extern int MPI_Get_processor_name(byte[] name, ref int resultlen);
    [DllImport(Lib)] private static extern int MPI_Error_string(int errorcode, byte[] text, ref int resultlen);
}
