using System.Runtime.InteropServices;
using PaLM.IR;
using PaLM.Runtime.Native;

namespace PaLM.CodeGen;

/// <summary>
/// <c>palmc compile FILE -o DIR</c>: writes <c>DIR/NAME.cs</c> (the generated source), <c>DIR/NAME.dll</c> (a console
/// program: <c>dotnet DIR/NAME.dll</c>) with its runtimeconfig, and what it needs beside it: the runtime facade,
/// TorchSharp, and libtorch's native libraries (hard-linked where the file system allows, ~1 GiB otherwise).
/// </summary>
public static class ProgramWriter
{
    /// <summary>Managed assemblies the generated program loads, found beside the compiler.</summary>
    private static readonly string[] s_managed = { "PaLM.Runtime.dll", "TorchSharp.dll", "ICSharpCode.SharpZipLib.dll", "SkiaSharp.dll", "System.Numerics.Tensors.dll" };

    public sealed record Written(string Source, string Assembly, int FilesLinked, int FilesCopied, int LibrariesPatched);

    public static Written Write(GeneratedSource source, string outDir, string programName)
    {
        Directory.CreateDirectory(outDir);
        var csPath = Path.Combine(outDir, programName + ".cs");
        var dllPath = Path.Combine(outDir, programName + ".dll");
        AtomicFile.WriteAllText(csPath, source.Text);
        RoslynCompiler.CompileToFile(source, dllPath);
        AtomicFile.WriteAllText(Path.Combine(outDir, programName + ".runtimeconfig.json"), RuntimeConfig());

        int linked = 0, copied = 0;
        var from = AppContext.BaseDirectory;
        foreach (var name in s_managed)
        {
            var src = Path.Combine(from, name);
            if (File.Exists(src)) Place(src, Path.Combine(outDir, name), ref linked, ref copied);
        }
        // TorchSharp loads its native libraries from beside TorchSharp.dll, so they go flat into the folder.
        var native = Path.Combine(from, "runtimes", "linux-x64", "native");
        foreach (var f in Directory.Exists(native) ? Directory.EnumerateFiles(native) : Directory.EnumerateFiles(from, "lib*.so*"))
            Place(f, Path.Combine(outDir, Path.GetFileName(f)), ref linked, ref copied);
        var patched = LibTorchSharpPatch.PatchDirectory(outDir);
        return new Written(csPath, dllPath, linked, copied, patched);
    }

    private static string RuntimeConfig()
    {
        var v = Environment.Version;
        return "{\n  \"runtimeOptions\": {\n    \"tfm\": \"net" + v.Major + "." + v.Minor + "\",\n" +
               "    \"framework\": { \"name\": \"Microsoft.NETCore.App\", \"version\": \"" + v.Major + "." + v.Minor + ".0\" }\n  }\n}\n";
    }

    /// <summary>Hard-links <paramref name="src"/> to <paramref name="dest"/>, or copies when linking is not possible.</summary>
    private static void Place(string src, string dest, ref int linked, ref int copied)
    {
        if (File.Exists(dest))
        {
            var (a, b) = (new FileInfo(src), new FileInfo(dest));
            if (a.Length == b.Length && a.LastWriteTimeUtc == b.LastWriteTimeUtc) return;
            File.Delete(dest);
        }
        if (OperatingSystem.IsLinux() && link(src, dest) == 0)
        {
            linked++;
            return;
        }
        var tmp = dest + ".tmp";
        File.Copy(src, tmp, overwrite: true);
        File.SetLastWriteTimeUtc(tmp, File.GetLastWriteTimeUtc(src));
        File.Move(tmp, dest, overwrite: true);
        copied++;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int link(string oldpath, string newpath);
}
