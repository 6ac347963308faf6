using PaLM.Runtime;
using PaLM.Runtime.Native;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

public sealed class NativeLoadTests
{
    [Fact]
    public void TorchSharpLoadsAndMultipliesMatrices()
    {
        TestUtil.Init();
        Rt.Initialize(); // idempotent
        using var scope = Rt.Scope();
        var a = tensor(new float[] { 1, 2, 3, 4, 5, 6 }, [2, 3]);
        var b = tensor(new float[] { 7, 8, 9, 10, 11, 12 }, [3, 2]);
        var c = a.matmul(b);
        // [1 2 3; 4 5 6] · [7 8; 9 10; 11 12] = [58 64; 139 154]
        Assert.Equal(new float[] { 58, 64, 139, 154 }, TestUtil.Values(c));
    }

    [Fact]
    public void BuildPatchedTheOutputCopyOnly()
    {
        var output = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", LibTorchSharpPatch.LibraryName);
        var cache = Path.Combine(Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages"),
            "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", LibTorchSharpPatch.LibraryName);
        Assert.True(File.Exists(output), output);
        Assert.False(LibTorchSharpPatch.NeedsPatch(output));
        if (!LibTorchSharpPatch.SystemLibStdCxxHasVersion(LibTorchSharpPatch.Version))
            Assert.True(LibTorchSharpPatch.FindStrongRequirement(File.ReadAllBytes(output), LibTorchSharpPatch.Version) < 0);
        if (File.Exists(cache))
            Assert.True(LibTorchSharpPatch.FindStrongRequirement(File.ReadAllBytes(cache), LibTorchSharpPatch.Version) >= 0);
    }
}
