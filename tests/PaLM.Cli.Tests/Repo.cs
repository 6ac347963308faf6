using System.Reflection;

namespace PaLM.Cli.Tests;

/// <summary>Where the programs under test are: palmc.dll and the example program.</summary>
internal static class Repo
{
    /// <summary>The folder holding PaLM.Compiler.sln.</summary>
    public static string Root => TestPaths.RepoRoot;

    /// <summary>palmc.dll as copied into this project's output (the ProjectReference to src/PaLM.Cli).</summary>
    public static string PalmcDll { get; } = typeof(PaLM.Cli.Program).Assembly.Location;

    /// <summary>
    /// examples/CompileAndRun's built program, in the same configuration and TFM as this test assembly
    /// (bin/&lt;Configuration&gt;/&lt;TFM&gt;/, mirrored from this project's own output folder).
    /// </summary>
    public static string ExampleDll => ExampleDllOf("CompileAndRun");

    /// <summary>examples/NAME's built program (see <see cref="ExampleDll"/>).</summary>
    public static string ExampleDllOf(string name)
    {
        {
            var testProject = Path.Combine(Root, "tests", "PaLM.Cli.Tests");
            var rel = Path.GetRelativePath(testProject, AppContext.BaseDirectory);
            if (rel.StartsWith("..", StringComparison.Ordinal) || Path.IsPathRooted(rel))
            {
                var config = typeof(Repo).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Debug";
                var tfm = new DirectoryInfo(AppContext.BaseDirectory).Name;
                rel = Path.Combine("bin", config, tfm);
            }
            return Path.GetFullPath(Path.Combine(Root, "examples", name, rel, name + ".dll"));
        }
    }
}

/// <summary>A temporary folder, deleted (recursively) on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public string Path { get; }

    public TempDir(string? parent = null)
    {
        Path = System.IO.Path.Combine(parent ?? System.IO.Path.GetTempPath(), "palmc-cli-tests-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
