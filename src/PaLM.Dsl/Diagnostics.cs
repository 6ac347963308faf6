using System.Text;
using PaLM.IR;

namespace PaLM.Dsl;

/// <summary>One error in a DSL file, at a source location.</summary>
public sealed record Diagnostic(SourceLoc Loc, string Message)
{
    /// <summary><c>FILE:LINE:COL: error: MESSAGE</c>, then the source line and a caret under the column.</summary>
    public string Format(Func<string, string?>? readLine = null)
    {
        var sb = new StringBuilder($"{Loc.File}:{Loc.Line}:{Loc.Column}: error: {Message}");
        var line = readLine?.Invoke(Loc.File) is { } text ? SourceText.Line(text, Loc.Line) : null;
        if (line is not null)
        {
            sb.Append('\n').Append(line).Append('\n');
            // Keep tabs so the caret lines up under the same column in a terminal.
            for (int i = 0; i < Loc.Column - 1 && i < line.Length; i++) sb.Append(line[i] == '\t' ? '\t' : ' ');
            sb.Append('^');
        }
        return sb.ToString();
    }
}

/// <summary>Thrown when a file has errors; carries all of them, in source order.</summary>
public sealed class DslException(IReadOnlyList<Diagnostic> diagnostics, IReadOnlyDictionary<string, string> sources)
    : Exception(diagnostics.Count == 0 ? "error" : diagnostics[0].Message)
{
    public IReadOnlyList<Diagnostic> Diagnostics { get; } = diagnostics;

    /// <summary>The text of every file read, so errors can show their source line.</summary>
    public IReadOnlyDictionary<string, string> Sources { get; } = sources;

    public string FormatAll() =>
        string.Join("\n", Diagnostics.Select(d => d.Format(f => Sources.TryGetValue(f, out var s) ? s : null)));
}

/// <summary>Line access into source text.</summary>
public static class SourceText
{
    public static string? Line(string text, int line)
    {
        var lines = text.Split('\n');
        return line >= 1 && line <= lines.Length ? lines[line - 1].TrimEnd('\r') : null;
    }
}
