using System.Collections.Immutable;
using PaLM.Dsl.Syntax;
using PaLM.IR;

namespace PaLM.Dsl.Binding;

/// <summary>
/// Lowers parsed statements to an IR graph: resolves dims and the mesh, names, calls (through the op table's
/// signatures), constants, repeat blocks and sharding annotations. Reports every error it can and keeps going.
/// </summary>
internal sealed partial class Binder
{
    private readonly List<Diagnostic> _diags;
    private readonly Dictionary<string, Dim> _dims = new(StringComparer.Ordinal);
    private readonly List<GraphArg> _args = new();
    private readonly List<(string Name, Value Value)> _outputs = new();
    private Mesh? _mesh;
    private GraphBuilder _builder = null!;

    private Binder(List<Diagnostic> diags) => _diags = diags;

    /// <summary>Binds a file's statements. A missing output is reported at <paramref name="file"/>:1:1, unless
    /// <paramref name="reportMissingOutput"/> is false (syntax errors dropped statements; the output may be among them).
    /// <paramref name="dimOverrides"/> replaces declared dims' sizes (dims defined from them follow), as a user's
    /// <c>--batch</c> or <c>--dim</c> does.</summary>
    public static Graph? Bind(string file, string graphName, ImmutableArray<Stmt> stmts, List<Diagnostic> diags, bool reportMissingOutput = true,
        IReadOnlyDictionary<string, long>? dimOverrides = null)
    {
        var b = new Binder(diags) { _overrides = dimOverrides, _file = file };
        return b.Run(file, graphName, stmts, reportMissingOutput);
    }

    private IReadOnlyDictionary<string, long>? _overrides;
    private string _file = "";

    private void Error(SourceLoc loc, string message) => _diags.Add(new Diagnostic(loc, message));

    private Graph? Run(string file, string graphName, ImmutableArray<Stmt> stmts, bool reportMissingOutput)
    {
        DeclareDimsAndMesh(stmts);
        _builder = new GraphBuilder(_dims);
        var top = new Scope(null, null);
        foreach (var s in stmts) BindStatement(s, top);
        if (_outputs.Count == 0 && _diags.Count == 0 && reportMissingOutput)
            Error(new SourceLoc(file, 1, 1), "the graph has no 'output' statement");
        if (_diags.Count > 0) return null;
        var dims = _dims.Values.OrderBy(d => _dimOrder[d.Name]).ToImmutableArray();
        var body = new Block(_args.Select(a => a.Value).ToImmutableArray(), top.Nodes.ToImmutableArray(),
            _outputs.Select(o => o.Value).ToImmutableArray());
        return new Graph(graphName, dims, _mesh, _args.ToImmutableArray(), body, _outputs.Select(o => o.Name).ToImmutableArray());
    }

    // ---- dims and mesh ------------------------------------------------------------------------------------------------

    private readonly Dictionary<string, int> _dimOrder = new(StringComparer.Ordinal);

    /// <summary>Dims and the mesh are declarations, order-free: an architecture file may use dims its includer declares.</summary>
    private void DeclareDimsAndMesh(ImmutableArray<Stmt> stmts)
    {
        var pending = new Dictionary<string, (NameRef Name, Expr Size)>(StringComparer.Ordinal);
        foreach (var s in stmts)
        {
            if (s is DimStmt d)
                foreach (var (name, size) in d.Dims)
                {
                    if (pending.TryGetValue(name.Name, out var prev))
                        Error(name.Loc, $"dim '{name.Name}' is already declared at {prev.Name.Loc}");
                    else if (IsReserved(name.Name))
                        Error(name.Loc, $"'{name.Name}' is a dtype and cannot name a dim");
                    else
                    {
                        pending[name.Name] = (name, size);
                        _dimOrder[name.Name] = _dimOrder.Count;
                    }
                }
        }
        foreach (var (name, size) in _overrides ?? new Dictionary<string, long>())
        {
            if (!pending.ContainsKey(name))
                Error(new SourceLoc(_file, 1, 1), $"dim override '{name}': the graph declares no such dim{Suggest(name, pending.Keys)}");
            else if (size <= 0)
                Error(pending[name].Name.Loc, $"dim override '{name}' must be positive, got {size}");
            else
                _dims[name] = new Dim(name, size);
        }
        var resolving = new HashSet<string>(StringComparer.Ordinal);
        long? Resolve(string name)
        {
            if (_dims.TryGetValue(name, out var done)) return done.Size;
            if (!pending.TryGetValue(name, out var decl)) return null;
            if (!resolving.Add(name))
            {
                Error(decl.Name.Loc, $"dim '{name}' is defined in terms of itself");
                return null;
            }
            var v = EvalInt(decl.Size, "dim size", Resolve);
            resolving.Remove(name);
            if (v is null) return null;
            if (v <= 0)
            {
                Error(decl.Size.Loc, $"dim '{name}' must have a positive size, got {v}");
                return null;
            }
            _dims[name] = new Dim(name, v.Value);
            return v;
        }
        foreach (var name in pending.Keys.ToList()) Resolve(name);

        foreach (var m in stmts.OfType<MeshStmt>())
        {
            if (_mesh is not null)
            {
                Error(m.Loc, "the mesh is declared twice");
                continue;
            }
            var axes = ImmutableArray.CreateBuilder<MeshAxis>();
            foreach (var (name, size) in m.Axes)
            {
                if (axes.Any(a => a.Name == name.Name)) { Error(name.Loc, $"mesh axis '{name.Name}' is declared twice"); continue; }
                var v = EvalInt(size, "mesh axis size", n => _dims.TryGetValue(n, out var dd) ? dd.Size : null);
                if (v is null) continue;
                if (v <= 0) { Error(size.Loc, $"mesh axis '{name.Name}' must have a positive size, got {v}"); continue; }
                axes.Add(new MeshAxis(name.Name, v.Value));
            }
            _mesh = new Mesh(axes.ToImmutable());
        }
    }

    private static bool IsReserved(string name) => DTypes.TryParse(name, out _);

    /// <summary>Evaluates an integer constant expression over numbers and dims.</summary>
    private long? EvalInt(Expr e, string what, Func<string, long?> dim)
    {
        var v = EvalConst(e, dim);
        if (v is null) return null;
        if (!double.IsFinite(v.Value) || Math.Abs(v.Value - Math.Round(v.Value)) > 1e-9)
        {
            Error(e.Loc, $"{what} must be an integer, got {v.Value}");
            return null;
        }
        if (Math.Abs(v.Value) >= 9223372036854775808.0) // 2^63
        {
            Error(e.Loc, $"{what} is too large for 64 bits, got {v.Value}");
            return null;
        }
        return (long)Math.Round(v.Value);
    }

    private double? EvalConst(Expr e, Func<string, long?> dim)
    {
        switch (e)
        {
            case NumberExpr n: return n.Value;
            case NameExpr n:
                var d = dim(n.Name);
                // A declared dim without a size had its own error (cycle, bad size); do not report its uses.
                if (d is null && !_dimOrder.ContainsKey(n.Name)) Error(n.Loc, $"unknown dim '{n.Name}'{Suggest(n.Name, _dimOrder.Keys)}");
                return d;
            case UnaryExpr u: return -EvalConst(u.Operand, dim);
            case BinaryExpr b:
                var (l, r) = (EvalConst(b.Left, dim), EvalConst(b.Right, dim));
                return l is null || r is null ? null : ConstEval.Binary(b.Op, l.Value, r.Value);
            case CallExpr c when c.Args.Length == 1 && c.Args[0] is PositionalArg { Subscripts: null } p && c.Arrow is null:
                var x = EvalConst(p.Value, dim);
                if (x is null) return null;
                if (ConstEval.TryUnary(c.Callee.Name, x.Value, out var y)) return y;
                Error(c.Callee.Loc, $"'{c.Callee.Name}' cannot be used in a constant expression");
                return null;
            default:
                Error(e.Loc, "expected a constant expression (numbers, dims, + - * /, sqrt, rsqrt, exp, log)");
                return null;
        }
    }

    /// <summary>" (did you mean 'x'?)" for a close enough known name.</summary>
    internal static string Suggest(string name, IEnumerable<string> known)
    {
        var best = known.Select(k => (k, d: Distance(name, k))).Where(p => p.d <= Math.Max(1, name.Length / 3) && p.d < name.Length)
            .OrderBy(p => p.d).ThenBy(p => p.k, StringComparer.Ordinal).FirstOrDefault();
        return best.k is null ? "" : $" (did you mean '{best.k}'?)";
    }

    private static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}
