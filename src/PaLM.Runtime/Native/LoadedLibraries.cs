using System.Runtime.InteropServices;

namespace PaLM.Runtime.Native;

/// <summary>Native libraries already mapped into this process (libtorch's own, whose file names carry build hashes).</summary>
internal static class LoadedLibraries
{
    /// <summary>
    /// A handle to the first library in /proc/self/maps whose file name satisfies <paramref name="name"/> (loading it
    /// again only adds a reference), or false where there is none or no /proc (another OS).
    /// </summary>
    public static bool TryFind(Func<string, bool> name, out nint handle)
    {
        handle = 0;
        try
        {
            if (!OperatingSystem.IsLinux()) return false;
            var path = File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
                .Where(f => f.Length >= 6).Select(f => f[^1]).FirstOrDefault(p => name(Path.GetFileName(p)));
            return path is not null && NativeLibrary.TryLoad(path, out handle);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or DllNotFoundException or BadImageFormatException)
        {
            return false;
        }
    }
}
