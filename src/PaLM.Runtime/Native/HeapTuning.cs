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
/// </summary>
internal static class HeapTuning
{
    // glibc malloc.h
    private const int M_TRIM_THRESHOLD = -1;
    private const int M_MMAP_MAX = -4;

    [DllImport("libc", EntryPoint = "mallopt")]
    private static extern int Mallopt(int param, int value);

    /// <summary>Applies the settings once per process (glibc on Linux only; elsewhere, or with PALMC_MALLOC=default, nothing).</summary>
    public static void Apply()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("PALMC_MALLOC") == "default") return;
        try
        {
            Mallopt(M_MMAP_MAX, 0);
            Mallopt(M_TRIM_THRESHOLD, int.MaxValue);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // Not glibc (musl, say): its allocator has no such knobs; run with its defaults.
        }
    }
}
