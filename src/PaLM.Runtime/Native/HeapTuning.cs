using System.Runtime.InteropServices;

namespace PaLM.Runtime.Native;

/// <summary>
/// Keeps the native heap's large blocks for reuse instead of handing them back to the kernel after every free.
/// <para>
/// Why: libtorch allocates CPU tensors with glibc malloc. By default glibc serves blocks over 128 KiB (up to 32 MiB as
/// it adapts) with mmap and returns them with munmap on free, and threads other than the main one get their own arenas,
/// which mmap anything over 64 MiB regardless. A training step allocates and frees the same large activations and
/// optimizer temporaries every step, so every step pays fresh page faults on every large tensor: on this VM that made
/// a 56 MB elementwise op take 80 ms instead of 3 ms, and the palm-cpu step 9.5 s instead of 5.6 s (docs/performance.md).
/// PyTorch users get the same effect with jemalloc or tcmalloc preloaded; here glibc's own knobs do it for the main
/// heap: no mmap for large blocks and no trimming of the heap's top, so freed blocks stay mapped for the next step.
/// The arena count cannot be lowered this late (glibc fixes its limit when the runtime's first threads start), so
/// other threads keep their own arenas, which give blocks over 64 MiB back on free whatever the settings: that is why
/// a lone device runs on the main thread (InProcessMesh.Run).
/// </para>
/// <para>
/// The main heap is also backed by transparent huge pages where the kernel leaves them to madvise (its default on
/// Debian): see <see cref="ReserveHugePages"/>.
/// </para>
/// </summary>
internal static class HeapTuning
{
    // glibc malloc.h
    private const int M_TRIM_THRESHOLD = -1;
    private const int M_MMAP_MAX = -4;

    // sys/mman.h
    private const int MADV_HUGEPAGE = 14;
    private const long HugePage = 2L << 20;

    [DllImport("libc", EntryPoint = "mallopt")]
    private static extern int Mallopt(int param, int value);

    [DllImport("libc", EntryPoint = "malloc")]
    private static extern nint Malloc(nuint size);

    [DllImport("libc", EntryPoint = "free")]
    private static extern void Free(nint p);

    [DllImport("libc", EntryPoint = "madvise")]
    private static extern int Madvise(nint addr, nuint length, int advice);

    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2Struct
    {
        public nuint Arena, Ordblks, Smblks, Hblks, Hblkhd, Usmblks, Fsmblks, Uordblks, Fordblks, Keepcost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    private static extern MallInfo2Struct MallInfo2();

    [DllImport("libc", EntryPoint = "getpid")]
    private static extern int GetPid();

    [DllImport("libc", EntryPoint = "gettid")]
    private static extern int GetTid();

    /// <summary>Bytes of the main heap advised for huge pages by <see cref="ReserveHugePages"/> (0 when it did
    /// not); for reports and tests.</summary>
    public static long HugePageBytes { get; private set; }

    // The block allocated after the reserved one and never freed (untouched but for glibc's header): it keeps the
    // reserved block, once freed, from joining the heap's top, which glibc would trim (the trim threshold cannot be
    // set above 2 GiB).
    private static nint s_fence;

    /// <summary>Applies the settings once per process (glibc on Linux only; elsewhere, or with PALMC_MALLOC=default, nothing).</summary>
    public static void Apply()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("PALMC_MALLOC") == "default") return;
        try
        {
            Mallopt(M_MMAP_MAX, 0);
            Mallopt(M_TRIM_THRESHOLD, int.MaxValue);
            ReserveHugePages();
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // Not glibc (musl, say): its allocator has no such knobs; run with its defaults.
        }
    }

    /// <summary>
    /// Grows the main heap by half the machine's memory (at most 16 GiB) of address space advised MADV_HUGEPAGE, and
    /// frees it for the heap to hand out: what glibc's <c>glibc.malloc.hugetlb=1</c> tunable does for the heap, which
    /// can only be set in the environment before the process starts. Nothing is touched, so nothing is resident until
    /// a tensor is written there, and then in 2 MiB pages.
    /// <para>
    /// Why: the step's GEMMs pack and stream operands of 6-57 MB and its fused loops stream as much; on 4 KiB pages that
    /// walks the page tables constantly. palm-cpu's step (docs/performance.md, "Changes made"): 3.4-3.9% faster in
    /// each of three off/on pairs, 1956-2022 ms against 2079-2180 in the quieter runs, resident memory unchanged; the
    /// glibc tunable read the same. libtorch's own switch (THP_MEM_ALLOC_ENABLE, which aligns every large block to
    /// 2 MiB) cost 0.7 GiB more resident memory for less.
    /// </para>
    /// <para>
    /// Only the main thread's arena gets it (other threads' arenas are mmap'd heaps of their own), which is where a lone
    /// device runs. Skipped when the kernel already backs everything with huge pages or never does, under strict
    /// overcommit (<c>vm.overcommit_memory=2</c>, where reserved address space counts against the limit), off the main
    /// thread, and with <c>PALMC_THP=0</c>.
    /// </para>
    /// </summary>
    private static void ReserveHugePages()
    {
        if (Environment.GetEnvironmentVariable("PALMC_THP") == "0" || GetTid() != GetPid()) return;
        if (!ReadSetting("/sys/kernel/mm/transparent_hugepage/enabled").Contains("[madvise]")) return;
        if (ReadSetting("/proc/sys/vm/overcommit_memory").Trim() == "2") return;
        long size = Math.Min(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 2, 16L << 30) / HugePage * HugePage;
        if (size < 64 * HugePage) return;
        nint block = Malloc((nuint)size);
        if (block == 0) return;
        // A fence larger than all free memory can only come from the heap's top, which now lies past the block.
        nint fence = Malloc(MallInfo2().Fordblks + 4096);
        if (fence < block + size)
        {
            if (fence != 0) Free(fence);
            Free(block);
            return;
        }
        s_fence = fence;
        long start = (block + HugePage - 1) / HugePage * HugePage, end = (block + size) / HugePage * HugePage;
        if (Madvise((nint)start, (nuint)(end - start), MADV_HUGEPAGE) == 0) HugePageBytes = end - start;
        Free(block);
    }

    private static string ReadSetting(string path)
    {
        try { return File.ReadAllText(path); }
        catch (IOException) { return ""; }
        catch (UnauthorizedAccessException) { return ""; }
    }
}
