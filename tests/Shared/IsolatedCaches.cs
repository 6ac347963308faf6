using System.Runtime.CompilerServices;

namespace PaLM.Tests;

/// <summary>
/// Every test process gets its own palmc cache folder (compiled programs, the stored matmul peak), so tests neither
/// read a developer's caches nor fill them, and a test that expects a fresh measurement gets one.
/// </summary>
internal static class IsolatedCaches
{
    [ModuleInitializer]
    internal static void Isolate()
    {
        if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable("PALMC_CACHE_DIR"))) return;
        var dir = Directory.CreateTempSubdirectory("palmc-test-cache-").FullName;
        Environment.SetEnvironmentVariable("PALMC_CACHE_DIR", dir);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(dir, recursive: true); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        };
    }
}
