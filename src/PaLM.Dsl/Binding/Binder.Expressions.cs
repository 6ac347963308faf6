using System.Collections.Immutable;
using PaLM.Dsl.Syntax;
using PaLM.IR;

namespace PaLM.Dsl.Binding;

internal sealed partial class Binder
{
    /// <summary>A bound expression: a compile-time constant, a value, or nothing (an error was reported).</summary>
    private readonly record struct Bound(Value? Value, double? Const)
    {
        public bool Failed => Value is null && Const is null;
        public static readonly Bound Fail = new(null, null);
    }

    /// <summary>Binds the right-hand side of an assignment to <paramref name="count"/> values, or null after an error.</summary>
    private Value[]? BindValues(Expr e, Scope scope, string hint, int count, ShardSyntax? shard)
    {
        if (count > 1 || shard is not null)
        {
            if (e is not CallExpr call)
            {
                Error(e.Loc, count > 1 ? $"only a call can produce {count} values" : "a sharding annotation goes on a value an op produces");
                return null;
            }
            var outs = BindCall(call, scope, hint, shard);
            if (outs is null) return null;
            if (outs.Value.Length != count)
            {
                Error(e.Loc, $"'{call.Callee.Name}' produces {outs.Value.Length} value{(outs.Value.Length == 1 ? "" : "s")}, assigned to {count} name{(count == 1 ? "" : "s")}");
                return null;
            }
            return outs.Value.ToArray();
        }
        var b = BindExpr(e, scope, hint);
        if (b.Failed) return null;
        if (b.Value is { } v) return new[] { v };
        Error(e.Loc, "a constant expression does not make a value; use it inside an op (for example x * 0.5)");
        return null;
    }

    private Bound BindExpr(Expr e, Scope scope, string hint)
    {
        switch (e)
        {
            case NumberExpr n:
                return new Bound(null, n.Value);
            case NameExpr n:
                if (_dims.TryGetValue(n.Name, out var dim)) return new Bound(null, dim.Size);
                var b = Lookup(scope, n.Name);
                if (b is null)
                {
                    Error(n.Loc, $"unknown name '{n.Name}'{Suggest(n.Name, AllNames(scope))}");
                    return Bound.Fail;
                }
                return b.Value is null ? Bound.Fail : new Bound(b.Value, null);
            case UnaryExpr u:
                var x = BindExpr(u.Operand, scope, hint);
                if (x.Failed) return x;
                if (x.Const is { } c) return new Bound(null, -c);
                return Apply("neg", new[] { x.Value! }, GraphBuilder.Attrs(), u.Loc, scope, hint);
            case BinaryExpr bin:
                var l = BindExpr(bin.Left, scope, hint + "_l");
                var r = BindExpr(bin.Right, scope, hint + "_r");
                if (l.Failed || r.Failed) return Bound.Fail;
                if (l.Const is { } lc && r.Const is { } rc) return new Bound(null, ConstEval.Binary(bin.Op, lc, rc));
                var lv = l.Value ?? Constant(l.Const!.Value, r.Value!.Type.DType, scope, bin.Loc);
                var rv = r.Value ?? Constant(r.Const!.Value, l.Value!.Type.DType, scope, bin.Loc);
                return Apply(ConstEval.OpName(bin.Op), new[] { lv, rv }, GraphBuilder.Attrs(), bin.Loc, scope, hint);
            case CallExpr call:
                var folded = TryFold(call, scope);
                if (folded is { } f) return f;
                var outs = BindCall(call, scope, hint, null);
                if (outs is null) return Bound.Fail;
                if (outs.Value.Length != 1)
                {
                    Error(call.Loc, $"'{call.Callee.Name}' produces {outs.Value.Length} values; assign them to {outs.Value.Length} names");
                    return Bound.Fail;
                }
                return new Bound(outs.Value[0], null);
            default:
                Error(e.Loc, "unsupported expression");
                return Bound.Fail;
        }
    }

    private IEnumerable<string> AllNames(Scope? s)
    {
        for (; s is not null; s = s.Parent)
            foreach (var n in s.Names.Keys) yield return n;
    }

    /// <summary>Folds <c>sqrt(d_model)</c> and the like when every operand is a constant.</summary>
    private Bound? TryFold(CallExpr call, Scope scope)
    {
        if (call.Args.Length != 1 || call.Args[0] is not PositionalArg { Subscripts: null } p || call.Arrow is not null) return null;
        if (!ConstEval.TryUnary(call.Callee.Name, 0, out _)) return null;
        if (!IsConstant(p.Value, scope)) return null;
        var x = BindExpr(p.Value, scope, "c");
        if (x.Const is not { } c) return Bound.Fail;
        ConstEval.TryUnary(call.Callee.Name, c, out var y);
        return new Bound(null, y);
    }

    private bool IsConstant(Expr e, Scope scope) => e switch
    {
        NumberExpr => true,
        NameExpr n => _dims.ContainsKey(n.Name),
        UnaryExpr u => IsConstant(u.Operand, scope),
        BinaryExpr b => IsConstant(b.Left, scope) && IsConstant(b.Right, scope),
        CallExpr c => c.Args.Length == 1 && c.Args[0] is PositionalArg { Subscripts: null } p && ConstEval.TryUnary(c.Callee.Name, 0, out _) && IsConstant(p.Value, scope),
        _ => false,
    };

    private Value Constant(double v, DType dtype, Scope scope, SourceLoc loc) =>
        _builder.Apply(scope.Nodes, OpTable.Get("constant"), Array.Empty<Value>(),
            GraphBuilder.Attrs(("dtype", new DTypeAttr(dtype)), ("value", new FloatAttr(v))), new[] { "c" }, loc)[0];

    private Bound Apply(string op, Value[] inputs, ImmutableSortedDictionary<string, Attr> attrs, SourceLoc loc, Scope scope, string hint)
    {
        try
        {
            return new Bound(_builder.Apply(scope.Nodes, OpTable.Get(op), inputs, attrs, new[] { hint }, loc)[0], null);
        }
        catch (TypeErrorException e)
        {
            Error(loc, e.Message);
            return Bound.Fail;
        }
    }

    /// <summary>Binds a call to an op from the table, checking operands and attributes against its signature.</summary>
    private ImmutableArray<Value>? BindCall(CallExpr call, Scope scope, string hint, ShardSyntax? shard)
    {
        var name = call.Callee.Name;
        if (!OpTable.TryGet(name, out var op) || op.HasRegion)
        {
            if (name == "repeat") Error(call.Callee.Loc, "'repeat' is a statement: repeat N { ... }");
            else Error(call.Callee.Loc, $"unknown function '{name}'{Suggest(name, OpTable.All.Select(o => o.Name))}");
            return null;
        }
        var sig = op.Signature;
        var positional = call.Args.OfType<PositionalArg>().ToList();
        var named = call.Args.OfType<NamedArg>().ToList();
        var ok = true;
        if (positional.Count < sig.MinOperands || positional.Count > sig.MaxOperands)
        {
            var want = sig.OperandCount;
            Error(call.Callee.Loc, $"'{name}' takes {want} operand{(want == "1" ? "" : "s")}, got {positional.Count}");
            ok = false;
        }
        if (call.Args.SkipWhile(a => a is PositionalArg).Any(a => a is PositionalArg))
        {
            Error(call.Args.First(a => a is PositionalArg && call.Args.IndexOf(a) > call.Args.IndexOf(named[0])).Loc, "operands must come before named attributes");
            ok = false;
        }

        var attrs = new SortedDictionary<string, Attr>(StringComparer.Ordinal);
        var takesSubscripts = sig.Attrs.Any(a => a.FromSyntax);
        if (takesSubscripts)
        {
            if (positional.Any(p => p.Subscripts is null) || call.Arrow is null)
            {
                Error(call.Callee.Loc, $"'{name}' needs subscripts on every operand and an output: {name}(a[i, j], b[j, k] -> [i, k])");
                ok = false;
            }
            else
            {
                foreach (var n in positional.SelectMany(p => p.Subscripts!.Value).Concat(call.Arrow.Value))
                    if (!_dims.ContainsKey(n.Name)) { Error(n.Loc, $"subscript '{n.Name}' is not a declared dim{Suggest(n.Name, _dimOrder.Keys)}"); ok = false; }
                attrs["operands"] = new DimListsAttr(positional.Select(p => p.Subscripts!.Value.Select(s => s.Name).ToImmutableArray()).ToImmutableArray());
                attrs["output"] = new DimsAttr(call.Arrow.Value.Select(s => s.Name).ToImmutableArray());
            }
        }
        else
        {
            foreach (var p in positional.Where(p => p.Subscripts is not null))
            {
                Error(p.Subscripts!.Value.FirstOrDefault()?.Loc ?? p.Loc, $"'{name}' does not take subscripts");
                ok = false;
            }
            if (call.Arrow is not null)
            {
                Error(call.Arrow.Value.FirstOrDefault()?.Loc ?? call.Loc, $"'{name}' does not take '->'");
                ok = false;
            }
        }

        var given = new HashSet<string>(StringComparer.Ordinal);
        foreach (var na in named)
        {
            var spec = sig.FindAttr(na.Key.Name);
            if (spec is null || spec.FromSyntax)
            {
                var takes = sig.Attrs.Where(a => !a.FromSyntax).Select(a => a.Name).ToList();
                Error(na.Key.Loc, $"'{name}' has no attribute '{na.Key.Name}'" + (takes.Count == 0 ? "; it takes none" : $"; it takes: {string.Join(", ", takes)}"));
                ok = false;
                continue;
            }
            if (!given.Add(na.Key.Name)) { Error(na.Key.Loc, $"attribute '{na.Key.Name}' given twice"); ok = false; continue; }
            var a = BindAttr(spec, na.Value, scope);
            if (a is null) ok = false;
            else attrs[na.Key.Name] = a;
        }
        foreach (var spec in sig.Attrs.Where(a => !a.FromSyntax))
        {
            if (attrs.ContainsKey(spec.Name) || given.Contains(spec.Name)) continue;
            if (spec.Default is { } d) attrs[spec.Name] = d;
            else { Error(call.Callee.Loc, $"'{name}' needs attribute '{spec.Name}=' ({Describe(spec.Kind)})"); ok = false; }
        }

        var bound = positional.Select(p => (p, b: BindExpr(p.Value, scope, hint + "_" + name))).ToList();
        if (bound.Any(x => x.b.Failed)) ok = false;
        // A number operand takes the dtype of the first tensor operand, wherever that stands (maximum(0, x)).
        var dtype = bound.Select(x => x.b.Value?.Type.DType).FirstOrDefault(t => t is not null) ?? DType.F32;
        var inputs = bound.Where(x => !x.b.Failed)
            .Select(x => x.b.Value ?? Constant(x.b.Const!.Value, dtype, scope, x.p.Loc)).ToList();
        if (!ok) return null;

        var frozen = attrs.ToImmutableSortedDictionary(StringComparer.Ordinal);
        try
        {
            var types = op.Infer(new InferContext(op, inputs.Select(v => v.Type).ToImmutableArray(), frozen, _dims));
            Sharding? sharding = null;
            if (shard is not null)
            {
                sharding = BindShard(shard, types[0], hint);
                if (sharding is null) return null;
            }
            var hints = types.Length == 1 ? new[] { hint } : Enumerable.Range(0, types.Length).Select(i => $"{hint}.{i}").ToArray();
            return _builder.Apply(scope.Nodes, op, inputs, frozen, hints, call.Loc, sharding: sharding);
        }
        catch (TypeErrorException e)
        {
            Error(call.Loc, e.Message);
            return null;
        }
    }

    private static string Describe(AttrKind k) => k switch
    {
        AttrKind.Dim => "a dim",
        AttrKind.Dims => "a dim or [dims]",
        AttrKind.Float => "a number",
        AttrKind.Int => "an integer",
        AttrKind.DType => "f32, f64, bf16 or i32",
        _ => k.ToString(),
    };

    private Attr? BindAttr(AttrSpec spec, AttrValue v, Scope scope)
    {
        switch (spec.Kind)
        {
            case AttrKind.Dim or AttrKind.Dims:
                var names = v switch
                {
                    ListValue l when spec.Kind == AttrKind.Dims => l.Items,
                    ExprValue { Value: NameExpr n } => ImmutableArray.Create(new NameRef(n.Name, n.Loc)),
                    _ => (ImmutableArray<NameRef>?)null,
                };
                if (names is null)
                {
                    Error(v.Loc, $"'{spec.Name}=' expects {Describe(spec.Kind)}");
                    return null;
                }
                var ok = true;
                foreach (var n in names.Value)
                    if (!_dims.ContainsKey(n.Name)) { Error(n.Loc, $"'{n.Name}' is not a declared dim{Suggest(n.Name, _dimOrder.Keys)}"); ok = false; }
                return ok ? new DimsAttr(names.Value.Select(n => n.Name).ToImmutableArray()) : null;
            case AttrKind.Float or AttrKind.Int:
                if (v is not ExprValue ev || !IsConstant(ev.Value, scope))
                {
                    Error(v.Loc, $"'{spec.Name}=' expects a constant number");
                    return null;
                }
                var c = EvalConst(ev.Value, n => _dims.TryGetValue(n, out var d) ? d.Size : null);
                if (c is null) return null;
                if (spec.Kind == AttrKind.Float) return new FloatAttr(c.Value);
                if (c.Value != Math.Round(c.Value)) { Error(v.Loc, $"'{spec.Name}=' expects an integer"); return null; }
                return new IntAttr((long)c.Value);
            case AttrKind.DType:
                if (v is ExprValue { Value: NameExpr t } && DTypes.TryParse(t.Name, out var dt)) return new DTypeAttr(dt);
                Error(v.Loc, $"'{spec.Name}=' expects f32, f64, bf16 or i32");
                return null;
            default:
                Error(v.Loc, $"'{spec.Name}=' cannot be written in the DSL");
                return null;
        }
    }
}
