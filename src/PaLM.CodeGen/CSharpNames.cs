using System.Text;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace PaLM.CodeGen;

/// <summary>
/// Maps names from the DSL or an IR file to safe C# identifiers: only <c>[A-Za-z_][A-Za-z0-9_]*</c> survives (so
/// quotes, braces, '@' and invisible format characters cannot), keywords become verbatim identifiers, names the
/// generated code uses itself are avoided, and collisions get a numeric suffix.
/// </summary>
public sealed class CSharpNames
{
    /// <summary>Names the generated code refers to; a user name must not shadow them.</summary>
    private static readonly HashSet<string> s_reserved = new(StringComparer.Ordinal)
    {
        "Rt", "torch", "Tensor", "ScalarType", "TensorSpec", "ProgramHost", "IGraphProgram", "System", "PaLM", "TorchSharp",
        "parameters", "inputs", "scope", "seed", "gen", "args", "Main", "Name", "Parameters", "Inputs", "Outputs",
        "Forward", "InitParameters", "device", "Mesh", "MeshShape", "DeviceContext",
    };

    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    /// <summary>The sanitized form of a name, before collision handling.</summary>
    public static string Sanitize(string name)
    {
        var sb = new StringBuilder(name.Length);
        foreach (var c in name) sb.Append(c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '_' ? c : '_');
        if (sb.Length == 0 || char.IsDigit(sb[0])) sb.Insert(0, '_');
        return sb.ToString();
    }

    /// <summary>A fresh identifier for <paramref name="name"/>, unique among those this instance has handed out.</summary>
    public string Fresh(string name)
    {
        var baseName = Sanitize(name);
        var candidate = baseName;
        for (int i = 1; s_reserved.Contains(candidate) || !_used.Add(candidate); i++) candidate = $"{baseName}_{i}";
        return candidate;
    }

    /// <summary>Marks a name as taken without handing it out.</summary>
    public void Reserve(string name) => _used.Add(name);

    /// <summary>An identifier token; keywords are emitted verbatim (<c>@class</c>).</summary>
    public static SyntaxToken Token(string safe)
    {
        if (!SyntaxFacts.IsValidIdentifier(safe) || safe.Any(c => c > 127))
            throw new ArgumentException($"not a sanitized identifier: {safe}");
        return SyntaxFacts.GetKeywordKind(safe) != SyntaxKind.None || SyntaxFacts.GetContextualKeywordKind(safe) != SyntaxKind.None
            ? SyntaxFactory.VerbatimIdentifier(default, safe, safe, default)
            : SyntaxFactory.Identifier(safe);
    }

    /// <summary>PascalCase class name from a graph name (<c>palm-tiny</c> → <c>PalmTiny</c>).</summary>
    public static string TypeName(string graphName)
    {
        var parts = Sanitize(graphName).Split('_', StringSplitOptions.RemoveEmptyEntries);
        var s = string.Concat(parts.Select(p => char.ToUpperInvariant(p[0]) + p[1..]));
        if (s.Length == 0 || char.IsDigit(s[0])) s = "Graph" + s;
        return s_reserved.Contains(s) ? s + "Graph" : s;
    }

    /// <summary>Text safe inside a <c>//</c> comment: no line breaks of any kind (C# counts U+2028/9 and U+0085), no controls.</summary>
    public static string CommentText(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (var c in s) sb.Append(char.IsControl(c) || c is '\u2028' or '\u2029' or '\u0085' ? ' ' : c);
        return sb.ToString();
    }
}
