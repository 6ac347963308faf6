using System.Diagnostics;
using System.Runtime.InteropServices;

namespace PaLM.Runtime;

/// <summary>
/// One op statement of a generated program compiled with profiling on: what the op is, where it came from, and its
/// FLOPs per execution on this device (from the op table; 0 for data movement), so time per site can be read as GFLOP/s.
/// </summary>
public sealed record OpSite(int Id, string Op, string Name, string Location, long Flops, bool IsMatmul, bool InLoop);

/// <summary>
/// Wall time per op site of one device, accumulated over the steps it ran. CPU kernels in TorchSharp are synchronous,
/// so the time between a call's start and its return is the op's own cost, dispatch and allocation included. Each
/// device thread owns its profile (no locking); the timer is <see cref="Stopwatch.GetTimestamp"/> (about 20 ns a read).
/// </summary>
public sealed class OpProfile
{
    private readonly long[] _ticks;
    private readonly long[] _calls;
    private readonly long[] _faults;
    private readonly long[] _allocated;
    private long _faultsAtStart, _allocatedAtStart;

    public OpProfile(IReadOnlyList<OpSite> sites)
    {
        Sites = sites;
        _ticks = new long[sites.Count];
        _calls = new long[sites.Count];
        _faults = new long[sites.Count];
        _allocated = new long[sites.Count];
    }

    public IReadOnlyList<OpSite> Sites { get; }

    /// <summary>A timestamp to pass to <see cref="Stop"/>; also notes the process's page faults and this thread's managed
    /// allocations so far.</summary>
    public long Start()
    {
        _faultsAtStart = MinorFaults();
        _allocatedAtStart = GC.GetAllocatedBytesForCurrentThread();
        return Stopwatch.GetTimestamp();
    }

    /// <summary>Adds the time since <paramref name="start"/> (and the page faults since) to <paramref name="site"/>.</summary>
    public void Stop(int site, long start)
    {
        _ticks[site] += Stopwatch.GetTimestamp() - start;
        _calls[site]++;
        _faults[site] += MinorFaults() - _faultsAtStart;
        _allocated[site] += GC.GetAllocatedBytesForCurrentThread() - _allocatedAtStart;
    }

    public void Reset()
    {
        Array.Clear(_ticks);
        Array.Clear(_calls);
        Array.Clear(_faults);
        Array.Clear(_allocated);
    }

    /// <summary>
    /// Page faults (first touches of fresh memory) taken while <paramref name="site"/> ran, process-wide: a large
    /// count means the op's output came from memory the allocator had just obtained from the kernel.
    /// </summary>
    public long PageFaults(int site) => _faults[site];

    /// <summary>
    /// Managed bytes the device's thread allocated while <paramref name="site"/> ran (TorchSharp's handles, shape arrays,
    /// the runtime's own bookkeeping; not tensor storage, which is native). Small ops are bound by this churn rather than
    /// their FLOPs, and it is what the garbage collector later pauses for. The op's worker threads are not counted.
    /// </summary>
    public long ManagedBytes(int site) => _allocated[site];

    // getrusage(RUSAGE_SELF).ru_minflt: Linux only (0 elsewhere). struct rusage: two timevals, then longs; ru_minflt is the 5th.
    [StructLayout(LayoutKind.Sequential)]
    private struct RUsage
    {
        public long UtimeSec, UtimeUsec, StimeSec, StimeUsec;
        public long MaxRss, IxRss, IdRss, IsRss, MinFlt, MajFlt, NSwap, InBlock, OuBlock, MsgSnd, MsgRcv, NSignals, NVCsw, NIvCsw;
    }

    [DllImport("libc", EntryPoint = "getrusage")]
    private static extern int GetRUsage(int who, out RUsage usage);

    private static long MinorFaults()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        return GetRUsage(0, out var u) == 0 ? u.MinFlt : 0;
    }

    public double Seconds(int site) => (double)_ticks[site] / Stopwatch.Frequency;

    public long Calls(int site) => _calls[site];

    /// <summary>Seconds over all sites.</summary>
    public double TotalSeconds => (double)_ticks.Sum() / Stopwatch.Frequency;

    /// <summary>Managed bytes allocated inside ops, over all sites.</summary>
    public long TotalManagedBytes => _allocated.Sum();
}
