using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Dsl.Syntax;

/// <summary>A name as written, with where it was written.</summary>
public sealed record NameRef(string Name, SourceLoc Loc)
{
    public override string ToString() => Name;
}

public abstract record Expr(SourceLoc Loc);
public sealed record NumberExpr(double Value, SourceLoc Loc) : Expr(Loc);
public sealed record NameExpr(string Name, SourceLoc Loc) : Expr(Loc);
public sealed record UnaryExpr(char Op, Expr Operand, SourceLoc Loc) : Expr(Loc);
public sealed record BinaryExpr(char Op, Expr Left, Expr Right, SourceLoc Loc) : Expr(Loc);

/// <summary><c>f(a, b[i, j], key=value -> [k])</c>: positional operands (optionally subscripted), named attributes, an optional arrow.</summary>
public sealed record CallExpr(NameRef Callee, ImmutableArray<Arg> Args, ImmutableArray<NameRef>? Arrow, SourceLoc Loc) : Expr(Loc);

public abstract record Arg(SourceLoc Loc);
public sealed record PositionalArg(Expr Value, ImmutableArray<NameRef>? Subscripts, SourceLoc Loc) : Arg(Loc);
public sealed record NamedArg(NameRef Key, AttrValue Value, SourceLoc Loc) : Arg(Loc);

public abstract record AttrValue(SourceLoc Loc);
public sealed record ListValue(ImmutableArray<NameRef> Items, SourceLoc Loc) : AttrValue(Loc);
public sealed record ExprValue(Expr Value, SourceLoc Loc) : AttrValue(Loc);

public sealed record TypeSyntax(NameRef DType, ImmutableArray<NameRef> Dims, SourceLoc Loc);

/// <summary><c>@shard(dim: axis, dim: (axis, axis), dim: _)</c>.</summary>
public sealed record ShardSyntax(ImmutableArray<(NameRef Dim, ImmutableArray<NameRef> Axes)> Entries, SourceLoc Loc);

public sealed record InitSyntax(NameRef Kind, Expr? Arg, SourceLoc Loc);

public abstract record Stmt(SourceLoc Loc);
public sealed record DimStmt(ImmutableArray<(NameRef Name, Expr Size)> Dims, SourceLoc Loc) : Stmt(Loc);
public sealed record MeshStmt(ImmutableArray<(NameRef Name, Expr Size)> Axes, SourceLoc Loc) : Stmt(Loc);
public sealed record IncludeStmt(string Path, SourceLoc Loc) : Stmt(Loc);
public sealed record ArgStmt(bool IsInput, NameRef Name, TypeSyntax Type, InitSyntax? Init, ShardSyntax? Shard, SourceLoc Loc) : Stmt(Loc);
public sealed record OutputStmt(ImmutableArray<NameRef> Names, SourceLoc Loc) : Stmt(Loc);
public sealed record AssignStmt(ImmutableArray<NameRef> Targets, Expr Value, ShardSyntax? Shard, SourceLoc Loc) : Stmt(Loc);

/// <summary><c>repeat N { ... }</c>, assembled from its opening line, body statements and closing brace.</summary>
public sealed record RepeatStmt(NameRef Count, ImmutableArray<Stmt> Body, SourceLoc Loc) : Stmt(Loc);

/// <summary>The opening line of a repeat block (only between splitting and block assembly).</summary>
internal sealed record RepeatOpen(NameRef Count, SourceLoc Loc) : Stmt(Loc);

/// <summary>A closing brace (only between splitting and block assembly).</summary>
internal sealed record BlockClose(SourceLoc Loc) : Stmt(Loc);
