using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using PaLM.Runtime.Native;
using static TorchSharp.torch;
using static PaLM.Runtime.Tests.TestUtil;

namespace PaLM.Runtime.Tests;

/// <summary>
/// MKL's vendor check (<see cref="MklDispatch"/>): answered where it helps (a non-Intel x86-64 CPU with AVX-512, unless
/// PALMC_MKL_AVX512=0), left alone elsewhere, and BLAS products on whatever kernels MKL then runs agree with float64.
/// </summary>
public sealed unsafe class MklDispatchTests
{
    public MklDispatchTests() => Init();

    [Fact]
    public void TheVendorCheckIsAnsweredExactlyWhereItHelps()
    {
        var x64Linux = OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;
        var avx512 = x64Linux && Avx512F.IsSupported && Avx512BW.IsSupported && Avx512DQ.IsSupported && Avx512F.VL.IsSupported;
        var intel = x64Linux && MklDispatch.Vendor() == "GenuineIntel";
        var disabled = Environment.GetEnvironmentVariable("PALMC_MKL_AVX512")?.Trim() == "0";
        if (!x64Linux || intel || !avx512) Assert.Equal(MklPath.AsShipped, MklDispatch.Path);
        else if (disabled) Assert.Equal(MklPath.Disabled, MklDispatch.Path);
        else if (MklDispatch.Path == MklPath.Unavailable)
            // The one environment-dependent refusal: a system that forbids writable code pages; MKL then stays as shipped.
            Assert.StartsWith("mprotect", MklDispatch.UnavailableReason);
        else Assert.Equal(MklPath.Avx512, MklDispatch.Path);       // libtorch 2.10's MKL has the check this expects
        if (MklDispatch.Path != MklPath.Avx512) return;
        // The answered check says "Intel" from now on.
        Assert.True(LoadedLibraries.TryFind(f => f == "libtorch_cpu.so", out var lib));
        var check = (delegate* unmanaged<int>)NativeLibrary.GetExport(lib, "mkl_serv_intel_cpu_true");
        Assert.Equal(1, check());
        Assert.Contains("AVX-512", MklDispatch.Describe());
    }

    [Theory]
    [InlineData(1, 400)]
    [InlineData(2, 400)]
    [InlineData(3, 400)]
    [InlineData(4, 1600)]       // large enough for MKL's blocked kernels, not its small-matrix path
    public void BlasProductsAgreeWithFloat64(int seed, int maxSize)
    {
        using var scope = Rt.Scope();
        var rng = new Random(seed);
        int least = maxSize > 400 ? maxSize / 2 : 1;
        long m = rng.Next(least, maxSize), k = rng.Next(least, maxSize), n = rng.Next(least, maxSize);
        var a = Randn(seed, m, k);
        var b = seed % 2 == 0 ? Randn(seed + 1, k, n) : Randn(seed + 1, n, k).t();
        var exact = a.to_type(ScalarType.Float64).mm(b.to_type(ScalarType.Float64));
        var err = (a.mm(b).to_type(ScalarType.Float64) - exact).abs().max().item<double>();
        Assert.True(err < 1e-4 * Math.Sqrt(k) + 1e-5, $"max error {err} for {m}x{k}x{n}");
    }
}
