namespace PaLM.Tests;

/// <summary>Locates the repository (the folder holding PaLM.Compiler.sln) from a test's output folder. Linked into every test project.</summary>
internal static class TestPaths
{
    private static readonly Lazy<string> s_root = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "PaLM.Compiler.sln"))) return dir.FullName;
        throw new InvalidOperationException($"no PaLM.Compiler.sln above {AppContext.BaseDirectory}");
    });

    public static string RepoRoot => s_root.Value;

    public static string Graphs => Path.Combine(RepoRoot, "graphs");

    /// <summary>graphs/NAME.palm.</summary>
    public static string Graph(string name) => Path.Combine(Graphs, name + ".palm");

    /// <summary>The top-level graph files (graphs/*.palm, not graphs/arch/).</summary>
    public static IEnumerable<string> TopLevelGraphs =>
        Directory.GetFiles(Graphs, "*.palm", SearchOption.TopDirectoryOnly).OrderBy(p => p, StringComparer.Ordinal);
}
