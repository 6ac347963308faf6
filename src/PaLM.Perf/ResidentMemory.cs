using System.Runtime.InteropServices;

namespace PaLM.Perf;

/// <summary>
/// Process memory on Linux (0 elsewhere): resident memory from /proc/self/status (VmRSS now, VmHWM its high-water
/// mark), and the native heap's bytes in use from glibc's mallinfo2 (tensor storage lives there): resident memory also
/// holds freed blocks the allocator keeps and the managed heap, so a leak of native tensors shows first and exactly in
/// the in-use figure.
/// </summary>
public static class ResidentMemory
{
    public static long Current() => Read("VmRSS:");

    /// <summary>
    /// VmHWM: the kernel's high-water mark. It is folded in lazily (on munmap and exit, not on madvise), so memory
    /// returned with madvise(MADV_DONTNEED) can leave it below an RSS read earlier; callers that sampled RSS take the max.
    /// </summary>
    public static long Peak() => Read("VmHWM:");

    /// <summary>Bytes the native heap has handed out and not had back (all arenas, mmapped blocks included).</summary>
    public static long NativeInUse()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        try
        {
            var m = MallInfo2();
            return (long)(m.Uordblks + m.Hblkhd);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            return 0;   // not glibc 2.33+
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2Struct
    {
        public nuint Arena, Ordblks, Smblks, Hblks, Hblkhd, Usmblks, Fsmblks, Uordblks, Fordblks, Keepcost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    private static extern MallInfo2Struct MallInfo2();

    private static long Read(string key)
    {
        if (!OperatingSystem.IsLinux()) return 0;
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key, StringComparison.Ordinal))
                return long.Parse(line[key.Length..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        return 0;
    }
}
