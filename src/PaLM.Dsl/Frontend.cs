using PaLM.Dsl.Binding;
using PaLM.IR;

namespace PaLM.Dsl;

/// <summary>The DSL front end: file → statements → verified IR graph.</summary>
public static class Frontend
{
    /// <summary>Compiles a DSL file (and what it includes). Throws <see cref="DslException"/> with every error found.</summary>
    public static Graph CompileFile(string path) => Compile(path, File.ReadAllText);

    /// <summary>
    /// Compiles a DSL file with some declared dims resized (<c>batch</c> → 512): dims defined from them follow, and every
    /// check (divisibility by the mesh included) runs on the new sizes. Naming an undeclared dim is an error.
    /// </summary>
    public static Graph CompileFile(string path, IReadOnlyDictionary<string, long>? dimOverrides) => Compile(path, File.ReadAllText, dimOverrides);

    /// <summary>Compiles DSL text held in memory; <paramref name="includes"/> supplies included files by path.</summary>
    public static Graph CompileText(string path, string text, IReadOnlyDictionary<string, string>? includes = null) =>
        Compile(path, p => p == path ? text
            : includes is not null && includes.TryGetValue(p, out var t) ? t
            : File.ReadAllText(p));

    private static Graph Compile(string path, Func<string, string> readFile, IReadOnlyDictionary<string, long>? dimOverrides = null)
    {
        var diags = new List<Diagnostic>();
        var loader = new SourceLoader(readFile, diags);
        var stmts = loader.Load(path);
        var name = Path.GetFileNameWithoutExtension(path);
        Graph? g = null;
        if (diags.Count == 0 || stmts.Length > 0)
        {
            var bindDiags = new List<Diagnostic>();
            g = Binder.Bind(path, name, stmts, bindDiags, reportMissingOutput: diags.Count == 0, dimOverrides);
            // Binding errors after syntax errors are often consequences of them; keep those in files without syntax errors.
            var firstSyntaxError = diags.GroupBy(d => d.Loc.File).ToDictionary(g => g.Key, g => g.Min(d => d.Loc.Line));
            diags.AddRange(bindDiags.Where(d => !firstSyntaxError.TryGetValue(d.Loc.File, out var line) || d.Loc.Line < line).ToList());
        }
        if (diags.Count > 0 || g is null)
        {
            var order = loader.Sources.Keys.Select((f, i) => (f, i)).ToDictionary(p => p.f, p => p.i);
            var sorted = diags.Distinct().OrderBy(d => order.GetValueOrDefault(d.Loc.File)).ThenBy(d => d.Loc.Line).ThenBy(d => d.Loc.Column).ToList();
            throw new DslException(sorted, loader.Sources);
        }
        Verifier.Verify(g);
        return g;
    }
}
