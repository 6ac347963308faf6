using System.Collections.Immutable;
using PaLM.Dsl.Syntax;
using PaLM.IR;

namespace PaLM.Dsl;

/// <summary>
/// Reads a DSL file and the files it includes into one statement list, with repeat blocks assembled.
/// Syntax errors are collected per statement so that one bad line does not hide the next.
/// </summary>
internal sealed class SourceLoader(Func<string, string> readFile, List<Diagnostic> diagnostics)
{
    public Dictionary<string, string> Sources { get; } = new(StringComparer.Ordinal);

    private readonly Stack<string> _including = new();

    public ImmutableArray<Stmt> Load(string path, SourceLoc? includedFrom = null)
    {
        string full, text;
        try
        {
            full = Path.GetFullPath(path);
            if (_including.Contains(full))
            {
                diagnostics.Add(new Diagnostic(includedFrom!, $"include cycle: '{path}' includes itself"));
                return ImmutableArray<Stmt>.Empty;
            }
            text = readFile(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            diagnostics.Add(new Diagnostic(includedFrom ?? new SourceLoc(path, 1, 1), $"cannot read '{path}': {e.Message}"));
            return ImmutableArray<Stmt>.Empty;
        }
        Sources[path] = text;
        _including.Push(full);
        var flat = new List<Stmt>();
        foreach (var st in StatementSplitter.Split(text))
        {
            var (stmt, error) = Grammar.ParseStatement(path, st);
            if (error is not null) diagnostics.Add(error);
            else if (stmt is IncludeStmt inc)
            {
                var dir = Path.GetDirectoryName(path) ?? "";
                flat.AddRange(Load(Path.Combine(dir, inc.Path), inc.Loc));
            }
            else flat.Add(stmt!);
        }
        _including.Pop();
        return Assemble(flat);
    }

    /// <summary>Turns <c>repeat N {</c> ... <c>}</c> line runs into nested <see cref="RepeatStmt"/>s.</summary>
    private ImmutableArray<Stmt> Assemble(List<Stmt> flat)
    {
        var stack = new Stack<(RepeatOpen? Open, List<Stmt> Body)>();
        stack.Push((null, new List<Stmt>()));
        foreach (var s in flat)
        {
            switch (s)
            {
                case RepeatOpen open:
                    stack.Push((open, new List<Stmt>()));
                    break;
                case BlockClose close when stack.Count == 1:
                    diagnostics.Add(new Diagnostic(close.Loc, "'}' without a matching 'repeat ... {'"));
                    break;
                case BlockClose:
                    var (o, body) = stack.Pop();
                    stack.Peek().Body.Add(new RepeatStmt(o!.Count, body.ToImmutableArray(), o.Loc));
                    break;
                default:
                    stack.Peek().Body.Add(s);
                    break;
            }
        }
        while (stack.Count > 1)
        {
            var (o, body) = stack.Pop();
            diagnostics.Add(new Diagnostic(o!.Loc, "'repeat' block is not closed with '}'"));
            stack.Peek().Body.Add(new RepeatStmt(o.Count, body.ToImmutableArray(), o.Loc));
        }
        return stack.Pop().Body.ToImmutableArray();
    }
}
