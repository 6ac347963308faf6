using System.Runtime.InteropServices;
using PaLM.Runtime.Native;

namespace PaLM.Runtime.Tests;

public sealed class LibTorchSharpPatchTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("palm-patch-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Original()
    {
        // The build patched the output copy; the NuGet cache keeps the original, and the restore put it there.
        var root = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        return Path.Combine(root, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", LibTorchSharpPatch.LibraryName);
    }

    [DllImport("libc", EntryPoint = "link")]
    private static extern int Link(string existing, string newPath);

    [Fact]
    public void MarksOnlyTheGlibcxx332EntryWeakAndIsIdempotent()
    {
        var copy = Path.Combine(_dir, LibTorchSharpPatch.LibraryName);
        File.Copy(Original(), copy);
        var before = File.ReadAllBytes(copy);
        var offset = LibTorchSharpPatch.FindStrongRequirement(before, LibTorchSharpPatch.Version);
        Assert.True(offset > 0);

        Assert.True(LibTorchSharpPatch.PatchFileUnconditionally(copy));
        var after = File.ReadAllBytes(copy);
        Assert.Equal(before.Length, after.Length);
        var changed = Enumerable.Range(0, before.Length).Where(i => before[i] != after[i]).ToArray();
        Assert.Equal([(int)offset], changed);                 // one byte: vna_flags |= VER_FLG_WEAK (0x2)
        Assert.Equal(before[offset] | 0x2, after[offset]);
        Assert.True(LibTorchSharpPatch.FindStrongRequirement(after, LibTorchSharpPatch.Version) < 0);
        Assert.True(LibTorchSharpPatch.FindStrongRequirement(after, "GLIBCXX_3.4.30") > 0);  // others untouched

        Assert.False(LibTorchSharpPatch.PatchFileUnconditionally(copy));
        Assert.Equal(after, File.ReadAllBytes(copy));
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp"));
    }

    [Fact]
    public void ReplacesTheFileInsteadOfWritingThroughHardLinks()
    {
        var source = Path.Combine(_dir, "cache.so");
        File.Copy(Original(), source);
        var nested = Directory.CreateDirectory(Path.Combine(_dir, "out", "runtimes")).FullName;
        var linked = Path.Combine(nested, LibTorchSharpPatch.LibraryName);
        Assert.Equal(0, Link(source, linked));
        var original = File.ReadAllBytes(source);

        Assert.Equal(1, PatchAllIgnoringSystem(Path.Combine(_dir, "out")));
        Assert.Equal(original, File.ReadAllBytes(source));   // the "NuGet cache" side of the link is unchanged
        Assert.NotEqual(original, File.ReadAllBytes(linked));
    }

    [Fact]
    public void PatchesOnlyWhenTheSystemLibStdCxxLacksTheVersion()
    {
        Assert.True(LibTorchSharpPatch.SystemLibStdCxxHasVersion("GLIBCXX_3.4"));
        Assert.False(LibTorchSharpPatch.SystemLibStdCxxHasVersion("GLIBCXX_99.0"));
        var copy = Path.Combine(_dir, LibTorchSharpPatch.LibraryName);
        File.Copy(Original(), copy);
        var lacks = !LibTorchSharpPatch.SystemLibStdCxxHasVersion(LibTorchSharpPatch.Version);
        Assert.Equal(lacks ? 1 : 0, LibTorchSharpPatch.PatchDirectory(_dir));
        Assert.Equal(0, LibTorchSharpPatch.PatchDirectory(_dir));
        Assert.Equal(0, LibTorchSharpPatch.PatchDirectory(Path.Combine(_dir, "missing")));
    }

    [Fact]
    public void IgnoresNonElfFiles()
    {
        var junk = Path.Combine(_dir, LibTorchSharpPatch.LibraryName);
        File.WriteAllText(junk, "not an ELF file");
        Assert.False(LibTorchSharpPatch.PatchFileUnconditionally(junk));
        Assert.False(LibTorchSharpPatch.DefinesVersion(File.ReadAllBytes(junk), "GLIBCXX_3.4"));
    }

    private static int PatchAllIgnoringSystem(string dir) =>
        Directory.EnumerateFiles(dir, LibTorchSharpPatch.LibraryName, SearchOption.AllDirectories)
            .Count(LibTorchSharpPatch.PatchFileUnconditionally);
}
