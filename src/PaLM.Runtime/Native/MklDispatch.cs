using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using System.Text;

namespace PaLM.Runtime.Native;

/// <summary>What <see cref="MklDispatch.Apply"/> did to MKL's kernel choice.</summary>
public enum MklPath
{
    /// <summary><see cref="MklDispatch.Apply"/> has not run (libtorch not initialized).</summary>
    Unknown,

    /// <summary>MKL chooses as shipped: an Intel CPU (its AVX-512 kernels are chosen anyway), one without AVX-512, or not
    /// x86-64 Linux.</summary>
    AsShipped,

    /// <summary>MKL's vendor check answers "Intel", so it chooses its kernels by the CPU's features: AVX-512.</summary>
    Avx512,

    /// <summary><c>PALMC_MKL_AVX512=0</c>: left as shipped on a CPU where it would have been applied.</summary>
    Disabled,

    /// <summary>The check could not be answered (no libtorch_cpu, no such export, code not as expected, or the page
    /// could not be made writable): MKL chooses as shipped.</summary>
    Unavailable,
}

/// <summary>
/// MKL (linked into libtorch_cpu, libtorch's BLAS) picks its kernels by CPU vendor before CPU features: on a CPU that
/// is not Intel's it runs its AVX2 kernels even where AVX-512 is there. On this machine's AMD EPYC (Zen 5, AVX-512
/// with full-width FMA) that halves every BLAS product: 180 GFLOP/s for a 2048² sgemm instead of 420, and 147-152
/// instead of 363-402 on attention's K = 64 products. The documented switch (<c>MKL_DEBUG_CPU_TYPE=5</c>) is gone
/// since MKL 2020, and <c>MKL_ENABLE_INSTRUCTIONS</c>/<c>MKL_CBWR</c> change nothing here (docs/performance.md).
/// <para>
/// So, as the widely used "fakeintel" shim does with LD_PRELOAD, the vendor check <c>mkl_serv_intel_cpu_true</c>
/// (exported by libtorch_cpu; it returns a cached CPUID vendor test) is made to return 1, after which MKL selects its
/// code path by the CPU's features, as it does on Intel's CPUs. Done in process, before MKL's first product (MKL
/// caches its choice then): the function's first instruction is checked to be the expected load of the cached
/// answer, and replaced by <c>mov eax, 1; ret</c>. Only on x86-64 Linux, on a non-Intel CPU that has AVX-512 F, BW,
/// DQ and VL (what MKL's AVX-512 kernels use); <c>PALMC_MKL_AVX512=0</c> leaves MKL as shipped. Results agree with the
/// AVX2 kernels to float rounding, not bit for bit (the sums are blocked differently).
/// </para>
/// </summary>
public static unsafe class MklDispatch
{
    private const string VendorCheck = "mkl_serv_intel_cpu_true";
    private static readonly object s_lock = new();

    /// <summary>What MKL chooses in this process (see <see cref="MklPath"/>).</summary>
    public static MklPath Path { get; private set; } = MklPath.Unknown;

    /// <summary>Why the check could not be answered, when <see cref="Path"/> is <see cref="MklPath.Unavailable"/>.</summary>
    public static string? UnavailableReason { get; private set; }

    /// <summary>A line for reports: which kernels MKL runs and why.</summary>
    public static string Describe() => Path switch
    {
        MklPath.Avx512 => "MKL on its AVX-512 kernels (vendor check answered for this non-Intel CPU; PALMC_MKL_AVX512=0 keeps MKL's choice)",
        MklPath.Disabled => "MKL as shipped (PALMC_MKL_AVX512=0): AVX2 kernels on this non-Intel CPU",
        MklPath.Unavailable => $"MKL as shipped: its vendor check could not be answered ({UnavailableReason})",
        MklPath.AsShipped => "MKL as shipped",
        _ => "MKL: not initialized",
    };

    /// <summary>Applies the vendor answer once, where it helps; call after libtorch is loaded and before any product.</summary>
    internal static void Apply()
    {
        lock (s_lock)
        {
            if (Path != MklPath.Unknown) return;
            try
            {
                Path = Decide();
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or IOException or UnauthorizedAccessException)
            {
                (Path, UnavailableReason) = (MklPath.Unavailable, e.Message);        // optional: MKL stays as shipped
            }
        }
    }

    private static MklPath Decide()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return MklPath.AsShipped;
        if (Vendor() == "GenuineIntel" || !(Avx512F.IsSupported && Avx512BW.IsSupported && Avx512DQ.IsSupported && Avx512F.VL.IsSupported))
            return MklPath.AsShipped;
        if (Environment.GetEnvironmentVariable("PALMC_MKL_AVX512")?.Trim() == "0") return MklPath.Disabled;
        if (!LoadedLibraries.TryFind(f => f == "libtorch_cpu.so", out var lib)) return Unavailable("no libtorch_cpu.so in this process");
        if (!NativeLibrary.TryGetExport(lib, VendorCheck, out var check)) return Unavailable($"libtorch_cpu.so exports no {VendorCheck}");
        var code = (byte*)check;
        if (code[0] != 0x8B || code[1] != 0x05)                                  // mov eax, [rip + cached answer]
            return Unavailable($"{VendorCheck} does not start as expected ({code[0]:X2} {code[1]:X2})");
        ReadOnlySpan<byte> answerYes = [0xB8, 0x01, 0x00, 0x00, 0x00, 0xC3];     // mov eax, 1; ret
        nint page = check & ~(nint)(Environment.SystemPageSize - 1);
        var length = (nuint)(check - page + answerYes.Length);
        // The page stays executable while it is written (another thread may be running code on it); a system that
        // refuses writable code pages (SELinux execmod, PaX) leaves MKL as shipped.
        if (mprotect(page, length, ProtRead | ProtWrite | ProtExec) != 0)
            return Unavailable($"mprotect refused a writable code page (errno {Marshal.GetLastPInvokeError()})");
        answerYes.CopyTo(new Span<byte>(code, answerYes.Length));
        mprotect(page, length, ProtRead | ProtExec);
        return MklPath.Avx512;
    }

    private static MklPath Unavailable(string reason)
    {
        UnavailableReason = reason;
        return MklPath.Unavailable;
    }

    /// <summary>The CPUID vendor string ("GenuineIntel", "AuthenticAMD").</summary>
    internal static string Vendor()
    {
        var (_, ebx, ecx, edx) = X86Base.CpuId(0, 0);
        Span<byte> name = stackalloc byte[12];
        BitConverter.TryWriteBytes(name, ebx);
        BitConverter.TryWriteBytes(name[4..], edx);
        BitConverter.TryWriteBytes(name[8..], ecx);
        return Encoding.ASCII.GetString(name);
    }

    private const int ProtRead = 1, ProtWrite = 2, ProtExec = 4;

    [DllImport("libc", SetLastError = true)]
    private static extern int mprotect(nint addr, nuint len, int prot);
}
