namespace PaLM.CodeGen.Tests;

internal static class Repo
{
    public static string Root { get; } = Find();

    private static string Find()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "PaLM.Compiler.sln"))) return d.FullName;
        throw new InvalidOperationException("repository root not found");
    }

    public static string Graph(string name) => Path.Combine(Root, "graphs", name);
}
