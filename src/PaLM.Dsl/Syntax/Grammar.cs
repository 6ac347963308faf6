using System.Collections.Immutable;
using System.Globalization;
using PaLM.IR;
using Sprache;

namespace PaLM.Dsl.Syntax;

/// <summary>
/// The Sprache grammar of one statement. Positions are made absolute (file line and column) from the statement's
/// start, which <see cref="StatementSplitter"/> supplies.
/// </summary>
internal sealed class Grammar
{
    public static readonly ImmutableHashSet<string> Keywords =
        ImmutableHashSet.Create("dim", "mesh", "include", "input", "param", "output", "repeat");

    private readonly string _file;
    private readonly int _line0;
    private readonly int _col0;

    // The furthest input position where a token was expected and not found, and what was expected there. Sprache's
    // alternatives report the failure of the last branch tried (for "y = f(x" that is '(' after a plain name), so
    // the error is placed where parsing got furthest instead.
    private IInput? _failAt;
    private readonly List<string> _failExpected = new();

    private Grammar(string file, int line0, int col0)
    {
        _file = file;
        _line0 = line0;
        _col0 = col0;
    }

    /// <summary>Parses one statement; on failure returns the diagnostic instead.</summary>
    public static (Stmt? Stmt, Diagnostic? Error) ParseStatement(string file, StatementText s)
    {
        var g = new Grammar(file, s.Line, s.Column);
        var result = g.Statement.End()(new Input(s.Text));
        if (result.WasSuccessful) return (result.Value, null);
        g.NoteFailure(Ws(result.Remainder).Remainder, result.Expectations);
        var rem = g._failAt!;
        var found = rem.AtEnd ? "end of line" : $"'{Snippet(s.Text, rem.Position)}'";
        var expected = g._failExpected.Select(x => x == "end of input" ? "end of line" : x).Distinct().Take(8).ToList();
        var msg = $"syntax error: unexpected {found}" + (expected.Count > 0 ? $"; expected {string.Join(" or ", expected)}" : "");
        return (null, new Diagnostic(g.Loc(rem.Line, rem.Column), msg));
    }

    private void NoteFailure(IInput at, IEnumerable<string> expectations)
    {
        if (_failAt is null || at.Position > _failAt.Position)
        {
            _failAt = at;
            _failExpected.Clear();
        }
        if (at.Position == _failAt.Position) _failExpected.AddRange(expectations);
    }

    private static string Snippet(string text, int pos)
    {
        var end = pos;
        while (end < text.Length && !char.IsWhiteSpace(text[end]) && end - pos < 12) end++;
        return end == pos ? text[pos].ToString() : text[pos..end];
    }

    private SourceLoc Loc(int line, int col) => new(_file, _line0 + line - 1, line == 1 ? _col0 + col - 1 : col);

    // ---- lexical ------------------------------------------------------------------------------------------------

    private static readonly Parser<string> Ws = Parse.WhiteSpace.Many().Text();

    /// <summary>Runs <paramref name="p"/> after skipping blanks and passes its start location to <paramref name="make"/>.</summary>
    private Parser<T> Tok<T, TIn>(Parser<TIn> p, Func<TIn, SourceLoc, T> make) => i =>
    {
        var afterWs = Ws(i).Remainder;
        var r = p(afterWs);
        if (r.WasSuccessful) return Result.Success(make(r.Value, Loc(afterWs.Line, afterWs.Column)), r.Remainder);
        NoteFailure(afterWs, r.Expectations);
        return Result.Failure<T>(r.Remainder, r.Message, r.Expectations);
    };

    private Parser<SourceLoc> Sym(string s) => Tok(Parse.String(s).Text().Named($"'{s}'"), (_, l) => l);

    private static readonly Parser<string> RawIdent =
        from first in Parse.Char(c => char.IsLetter(c) || c == '_', "letter")
        from rest in Parse.Char(c => char.IsLetterOrDigit(c) || c == '_', "letter or digit").Many().Text()
        select first + rest;

    private Parser<NameRef> Name => Tok(RawIdent.Where(s => !Keywords.Contains(s)).Named("name"), (s, l) => new NameRef(s, l));

    private Parser<SourceLoc> Keyword(string kw) =>
        Tok(RawIdent.Where(s => s == kw).Named($"'{kw}'"), (_, l) => l);

    private static readonly Parser<string> RawNumber =
        from digits in Parse.Digit.AtLeastOnce().Text()
        from frac in Parse.Char('.').Then(_ => Parse.Digit.Many().Text()).Select(f => "." + f).Optional()
        from exp in (from e in Parse.Chars('e', 'E')
                     from sign in Parse.Chars('+', '-').Optional()
                     from ds in Parse.Digit.AtLeastOnce().Text()
                     select "e" + (sign.IsDefined ? sign.Get().ToString() : "") + ds).Optional()
        select digits + frac.GetOrElse("") + exp.GetOrElse("");

    private Parser<Expr> Number => Tok(RawNumber.Named("number"),
        (s, l) => (Expr)new NumberExpr(double.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture), l));

    private Parser<string> StringLit => Tok(
        from open in Parse.Char('"')
        from body in Parse.CharExcept("\"\n").Many().Text()
        from close in Parse.Char('"')
        select body, (s, _) => s).Named("string");

    private Parser<ImmutableArray<T>> CommaList<T>(Parser<T> item) =>
        from first in item
        from rest in Sym(",").Then(_ => item).Many()
        select new[] { first }.Concat(rest).ToImmutableArray();

    private Parser<ImmutableArray<NameRef>> NameList =>
        from open in Sym("[")
        from names in CommaList(Name).Optional()
        from close in Sym("]")
        select names.GetOrElse(ImmutableArray<NameRef>.Empty);

    // ---- expressions ----------------------------------------------------------------------------------------------

    private Parser<Expr> Expression => Parse.Ref(() => Additive);

    private Parser<Expr> Additive => Binary(Multiplicative, '+', '-');

    private Parser<Expr> Multiplicative => Binary(Unary, '*', '/');

    private Parser<Expr> Binary(Parser<Expr> operand, char a, char b) =>
        from first in operand
        from rest in (from op in Tok(Parse.Chars(a, b).Named($"'{a}' or '{b}'"), (c, l) => (c, l)) from right in operand select (op, right)).Many()
        select rest.Aggregate(first, (left, r) => new BinaryExpr(r.op.c, left, r.right, r.op.l));

    private Parser<Expr> Unary => Parse.Ref(() =>
        (from minus in Sym("-") from e in Unary select (Expr)new UnaryExpr('-', e, minus))
        .Or(Primary));

    private Parser<Expr> Primary => Parse.Ref(() =>
        Number
        .Or(from open in Sym("(") from e in Expression from close in Sym(")") select e)
        .Or(Call)
        .Or(Name.Select(n => (Expr)new NameExpr(n.Name, n.Loc))));

    private Parser<Expr> Call =>
        from callee in Name
        from open in Sym("(")
        from args in CommaList(Argument).Optional()
        from arrow in Sym("->").Then(_ => NameList).Optional()
        // Named attributes may follow an einsum-style arrow: causal_einsum(q[..], k[..] -> [..], query=s, key=t, blocks=4).
        from after in (from comma in Sym(",") from a in Named select a).Many()
        from close in Sym(")")
        select (Expr)new CallExpr(callee, [.. args.GetOrElse(ImmutableArray<Arg>.Empty), .. after],
            arrow.IsDefined ? arrow.Get() : null, callee.Loc);

    private Parser<Arg> Argument => Parse.Ref(() => Named.Or(Positional));

    private Parser<Arg> Named =>
        from key in Name
        from eq in Sym("=")
        from value in NameList.Select(l => (AttrValue)new ListValue(l, eq)).Or(Expression.Select(e => (AttrValue)new ExprValue(e, e.Loc)))
        select (Arg)new NamedArg(key, value, key.Loc);

    private Parser<Arg> Positional =>
        from value in Expression
        from subs in NameList.Optional()
        select (Arg)new PositionalArg(value, subs.IsDefined ? subs.Get() : null, value.Loc);

    // ---- statements -----------------------------------------------------------------------------------------------

    private Parser<TypeSyntax> Type =>
        from dtype in Name
        from dims in NameList
        select new TypeSyntax(dtype, dims, dtype.Loc);

    private Parser<ShardSyntax> Shard =>
        from at in Sym("@")
        from kw in Tok(RawIdent.Where(s => s == "shard").Named("'shard'"), (_, l) => l)
        from open in Sym("(")
        from entries in CommaList(
            from dim in Name
            from colon in Sym(":")
            from axes in Sym("_").Return(ImmutableArray<NameRef>.Empty)
                .Or(from o in Sym("(") from names in CommaList(Name) from c in Sym(")") select names)
                .Or(Name.Select(n => ImmutableArray.Create(n)))
            select (dim, axes)).Optional()
        from close in Sym(")")
        select new ShardSyntax(entries.GetOrElse(ImmutableArray<(NameRef, ImmutableArray<NameRef>)>.Empty), at);

    private Parser<ImmutableArray<(NameRef, Expr)>> Sizes =>
        CommaList(from n in Name from eq in Sym("=") from e in Expression select (n, e));

    private Parser<InitSyntax> Init =>
        from kind in Name
        from arg in (from o in Sym("(") from e in Expression from c in Sym(")") select e).Optional()
        select new InitSyntax(kind, arg.GetOrDefault(), kind.Loc);

    private Parser<Stmt> Statement =>
        (from kw in Keyword("dim") from sizes in Sizes select (Stmt)new DimStmt(sizes, kw))
        .Or(from kw in Keyword("mesh") from sizes in Sizes select (Stmt)new MeshStmt(sizes, kw))
        .Or(from kw in Keyword("include") from path in StringLit select (Stmt)new IncludeStmt(path, kw))
        .Or(from kw in Keyword("input").Select(l => (l, true)).Or(Keyword("param").Select(l => (l, false)))
            from name in Name
            from colon in Sym(":")
            from type in Type
            from init in Sym("=").Then(_ => Init).Optional()
            from shard in Shard.Optional()
            select (Stmt)new ArgStmt(kw.Item2, name, type, init.GetOrDefault(), shard.GetOrDefault(), kw.Item1))
        .Or(from kw in Keyword("output") from names in CommaList(Name) select (Stmt)new OutputStmt(names, kw))
        .Or(from kw in Keyword("repeat") from count in Name from open in Sym("{") select (Stmt)new RepeatOpen(count, kw))
        .Or(Sym("}").Select(l => (Stmt)new BlockClose(l)))
        .Or(from targets in CommaList(Name)
            from eq in Sym("=")
            from value in Expression
            from shard in Shard.Optional()
            select (Stmt)new AssignStmt(targets, value, shard.GetOrDefault(), targets[0].Loc));
}
