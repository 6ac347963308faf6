namespace PaLM.Dsl.Syntax;

/// <summary>One statement's text and where it starts (1-based) in its file.</summary>
internal readonly record struct StatementText(string Text, int Line, int Column);

/// <summary>
/// Cuts a file into statements before parsing, so a syntax error in one statement does not hide errors in the next:
/// a statement ends at the end of a line unless a ( or [ is still open. Comments run from # to the end of the line.
/// A line that starts with a keyword or '}' always starts a new statement (neither can continue an expression), so an
/// unclosed bracket does not swallow the rest of the file.
/// </summary>
internal static class StatementSplitter
{
    public static IEnumerable<StatementText> Split(string source)
    {
        var lines = source.Replace("\r\n", "\n").Split('\n');
        var buffer = new System.Text.StringBuilder();
        int startLine = 0, startCol = 0, depth = 0;
        for (int i = 0; i < lines.Length; i++)
        {
            var line = StripComment(lines[i]);
            if (buffer.Length > 0 && StartsStatement(line))
            {
                yield return new StatementText(buffer.ToString().TrimEnd(), startLine, startCol);
                buffer.Clear();
                depth = 0;
            }
            if (buffer.Length == 0)
            {
                var first = FirstNonSpace(line);
                if (first < 0) continue;
                startLine = i + 1;
                startCol = first + 1;
                buffer.Append(line, first, line.Length - first);
            }
            else
            {
                buffer.Append('\n').Append(line);
            }
            depth += Depth(line);
            if (depth <= 0)
            {
                yield return new StatementText(buffer.ToString().TrimEnd(), startLine, startCol);
                buffer.Clear();
                depth = 0;
            }
        }
        if (buffer.Length > 0) yield return new StatementText(buffer.ToString().TrimEnd(), startLine, startCol);
    }

    private static bool StartsStatement(string line)
    {
        var first = FirstNonSpace(line);
        if (first < 0) return false;
        if (line[first] == '}') return true;
        var end = first;
        while (end < line.Length && (char.IsLetterOrDigit(line[end]) || line[end] == '_')) end++;
        return Grammar.Keywords.Contains(line[first..end]);
    }

    private static int FirstNonSpace(string s)
    {
        for (int i = 0; i < s.Length; i++)
            if (!char.IsWhiteSpace(s[i])) return i;
        return -1;
    }

    private static int Depth(string line)
    {
        int d = 0;
        bool inString = false;
        foreach (var c in line)
        {
            if (c == '"') inString = !inString;
            else if (!inString && (c == '(' || c == '[')) d++;
            else if (!inString && (c == ')' || c == ']')) d--;
        }
        return d;
    }

    private static string StripComment(string line)
    {
        bool inString = false;
        for (int i = 0; i < line.Length; i++)
        {
            if (line[i] == '"') inString = !inString;
            else if (line[i] == '#' && !inString) return line[..i];
        }
        return line.TrimEnd('\r');
    }
}
