using System.Collections.Immutable;
using PaLM.Dsl.Syntax;
using PaLM.IR;

namespace PaLM.Dsl.Binding;

internal sealed partial class Binder
{
    private void BindStatement(Stmt s, Scope scope)
    {
        switch (s)
        {
            case DimStmt or MeshStmt when !scope.IsTop:
                Error(s.Loc, $"'{(s is DimStmt ? "dim" : "mesh")}' declarations belong at the top level, not inside 'repeat'");
                break;
            case DimStmt or MeshStmt:
                break; // handled up front
            case ArgStmt a:
                BindArg(a, scope);
                break;
            case OutputStmt o when !scope.IsTop:
                Error(o.Loc, "'output' belongs at the top level, not inside 'repeat'");
                break;
            case OutputStmt o:
                foreach (var n in o.Names)
                {
                    var b = Lookup(scope, n.Name);
                    if (b is null) Error(n.Loc, $"unknown name '{n.Name}'{Suggest(n.Name, scope.Names.Keys)}");
                    else if (_outputs.Any(x => x.Name == n.Name)) Error(n.Loc, $"'{n.Name}' is already an output");
                    else if (b.Value is { } v) _outputs.Add((n.Name, v));
                }
                break;
            case AssignStmt a:
                BindAssign(a, scope);
                break;
            case RepeatStmt r:
                BindRepeat(r, scope);
                break;
            default:
                Error(s.Loc, $"unexpected statement {s.GetType().Name}");
                break;
        }
    }

    /// <summary>Finds a name, capturing it from enclosing scopes as an invariant operand of each repeat it crosses.</summary>
    private Binding? Lookup(Scope scope, string name)
    {
        if (scope.Names.TryGetValue(name, out var b)) return b;
        if (scope.Parent is null) return null;
        var outer = Lookup(scope.Parent, name);
        if (outer?.Value is null) return outer;
        var inner = _builder.NewValue(name, outer.Value.Type, outer.Value.Sharding);
        scope.Invariant.Add((outer.Value, inner));
        var captured = outer with { Value = inner };
        scope.Names[name] = captured;
        return captured;
    }

    private bool CheckNewName(NameRef n, Scope scope, bool isDeclaration)
    {
        if (_dims.ContainsKey(n.Name) || _dimOrder.ContainsKey(n.Name))
        {
            Error(n.Loc, $"'{n.Name}' is already a dim; values and dims share one namespace");
            return false;
        }
        if (IsReserved(n.Name))
        {
            Error(n.Loc, $"'{n.Name}' is a dtype and cannot name a value");
            return false;
        }
        var existing = Lookup(scope, n.Name);
        if (existing?.Kind is { } kind)
        {
            Error(n.Loc, $"'{n.Name}' is already declared as {(kind == ArgKind.Parameter ? "a parameter" : "an input")} at {existing.Loc}");
            return false;
        }
        if (isDeclaration && existing is not null)
        {
            Error(n.Loc, $"'{n.Name}' is already defined at {existing.Loc}");
            return false;
        }
        return true;
    }

    private void BindArg(ArgStmt a, Scope scope)
    {
        if (a.IsInput && !scope.IsTop)
        {
            Error(a.Loc, "'input' belongs at the top level, not inside 'repeat'");
            return;
        }
        if (!CheckNewName(a.Name, scope, isDeclaration: true))
        {
            scope.Names.TryAdd(a.Name.Name, new Binding(null, null, a.Name.Loc));
            return;
        }
        var type = BindType(a.Type);
        Init? init = null;
        if (!a.IsInput)
        {
            if (a.Init is null) Error(a.Name.Loc, $"parameter '{a.Name.Name}' needs an initializer: = normal(std), ones, zeros or constant(value)");
            else init = BindInit(a.Init);
        }
        else if (a.Init is not null) Error(a.Init.Loc, $"input '{a.Name.Name}' cannot have an initializer; inputs are fed data");
        var sharding = type is null || a.Shard is null ? null : BindShard(a.Shard, type, a.Name.Name);
        if (type is null || (!a.IsInput && init is null) || (a.Shard is not null && sharding is null))
        {
            scope.Names[a.Name.Name] = new Binding(null, null, a.Name.Loc);
            return;
        }
        var kind = a.IsInput ? ArgKind.Input : ArgKind.Parameter;
        var value = a.IsInput
            ? NewArg(a.Name.Name, type, sharding, a.Name.Loc, kind, null)
            : MakeParam(scope, a.Name.Name, type, sharding, a.Name.Loc, init!);
        scope.Names[a.Name.Name] = new Binding(value, kind, a.Name.Loc);
    }

    private Value NewArg(string name, TensorType type, Sharding? sharding, SourceLoc loc, ArgKind kind, Init? init)
    {
        var v = _builder.NewValue(name, type, sharding, loc);
        _args.Add(new GraphArg(v, kind, init));
        return v;
    }

    /// <summary>
    /// A parameter declared inside <c>repeat N</c> is one graph parameter with a leading N dim (stacked per layer);
    /// the body receives its slice as a stacked operand. Nested repeats stack once per level.
    /// </summary>
    private Value MakeParam(Scope scope, string name, TensorType type, Sharding? sharding, SourceLoc loc, Init init)
    {
        if (scope.IsTop) return NewArg(name, type, sharding, loc, ArgKind.Parameter, init);
        var count = scope.Count!.Value;
        var stackedType = type.WithDims(new[] { count }.Concat(type.Dims));
        var stackedSharding = sharding is null ? null : new Sharding(sharding.DimAxes.Insert(0, ImmutableArray<string>.Empty));
        var outer = MakeParam(scope.Parent!, name, stackedType, stackedSharding, loc, init);
        var inner = _builder.NewValue(name, type, sharding, loc);
        scope.Stacked.Add((outer, inner));
        return inner;
    }

    private TensorType? BindType(TypeSyntax t)
    {
        var ok = true;
        if (!DTypes.TryParse(t.DType.Name, out var dtype))
        {
            Error(t.DType.Loc, $"unknown dtype '{t.DType.Name}'; expected f32, f64, bf16 or i32");
            ok = false;
        }
        var dims = new List<Dim>();
        foreach (var d in t.Dims)
        {
            if (!_dims.TryGetValue(d.Name, out var dim))
            {
                if (!_dimOrder.ContainsKey(d.Name)) Error(d.Loc, $"undefined dim '{d.Name}'{Suggest(d.Name, _dimOrder.Keys)}");
                ok = false;
            }
            else if (dims.Contains(dim))
            {
                Error(d.Loc, $"dim '{d.Name}' appears twice in one type");
                ok = false;
            }
            else dims.Add(dim);
        }
        if (!ok) return null;
        var type = new TensorType(dtype, dims.ToImmutableArray());
        try { _ = type.ElementCount; }
        catch (OverflowException)
        {
            Error(t.Loc, $"{type} has more than 2^63 elements");
            return null;
        }
        return type;
    }

    private Init? BindInit(InitSyntax i)
    {
        switch (i.Kind.Name)
        {
            case "ones" or "zeros" when i.Arg is null:
                return new Init(InitKind.Constant, i.Kind.Name == "ones" ? 1 : 0);
            case "normal" or "constant" when i.Arg is not null:
                var v = EvalConst(i.Arg, n => _dims.TryGetValue(n, out var d) ? d.Size : null);
                if (v is null) return null;
                if (i.Kind.Name == "normal" && !(v > 0)) { Error(i.Arg.Loc, $"normal(std) needs a positive std, got {v}"); return null; }
                return new Init(i.Kind.Name == "normal" ? InitKind.Normal : InitKind.Constant, v.Value);
            default:
                Error(i.Loc, $"unknown initializer '{i.Kind.Name}{(i.Arg is null ? "" : "(...)")}'; expected normal(std), ones, zeros or constant(value)");
                return null;
        }
    }

    private Sharding? BindShard(ShardSyntax s, TensorType type, string tensor)
    {
        if (_mesh is null)
        {
            Error(s.Loc, $"'{tensor}' has a sharding annotation but no mesh is declared (add: mesh data=1, model=1)");
            return null;
        }
        var perDim = Enumerable.Repeat(ImmutableArray<string>.Empty, type.Rank).ToArray();
        var used = new Dictionary<string, NameRef>(StringComparer.Ordinal);
        var seenDims = new HashSet<string>(StringComparer.Ordinal);
        var ok = true;
        foreach (var (dim, axes) in s.Entries)
        {
            var i = type.IndexOf(dim.Name);
            if (i < 0) { Error(dim.Loc, $"'{dim.Name}' is not a dim of '{tensor}': {type}"); ok = false; continue; }
            if (!seenDims.Add(dim.Name)) { Error(dim.Loc, $"dim '{dim.Name}' of '{tensor}' is annotated twice"); ok = false; continue; }
            foreach (var axis in axes)
            {
                if (!_mesh.HasAxis(axis.Name))
                {
                    Error(axis.Loc, $"mesh has no axis '{axis.Name}' (axes: {string.Join(", ", _mesh.Axes.Select(a => a.Name))}){Suggest(axis.Name, _mesh.Axes.Select(a => a.Name))}");
                    ok = false;
                }
                else if (used.TryGetValue(axis.Name, out var prev))
                {
                    Error(axis.Loc, $"mesh axis '{axis.Name}' is used twice in the sharding of '{tensor}' (first at column {prev.Loc.Column})");
                    ok = false;
                }
                else used[axis.Name] = axis;
            }
            perDim[i] = axes.Select(a => a.Name).ToImmutableArray();
        }
        return ok ? new Sharding(perDim.ToImmutableArray()) : null;
    }

    private void BindAssign(AssignStmt a, Scope scope)
    {
        var ok = a.Targets.All(t => CheckNewName(t, scope, isDeclaration: false));
        var dup = a.Targets.GroupBy(t => t.Name).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) { Error(dup.Skip(1).First().Loc, $"'{dup.Key}' is assigned twice in one statement"); ok = false; }
        var values = ok ? BindValues(a.Value, scope, a.Targets[0].Name, a.Targets.Length, a.Shard) : null;
        for (int i = 0; i < a.Targets.Length; i++)
            scope.Names[a.Targets[i].Name] = new Binding(values?[i], null, a.Targets[i].Loc);
    }

    private void BindRepeat(RepeatStmt r, Scope outer)
    {
        if (!_dims.TryGetValue(r.Count.Name, out var count))
        {
            Error(r.Count.Loc, $"repeat count '{r.Count.Name}' must be a declared dim{Suggest(r.Count.Name, _dimOrder.Keys)}");
            return;
        }
        var scope = new Scope(outer, count);
        var carriedNames = new List<string>();
        // Names assigned in the body that exist before it flow from one iteration to the next.
        foreach (var name in AssignedNames(r.Body).Distinct())
        {
            var b = Lookup(outer, name);
            if (b?.Value is null) continue;
            var inner = _builder.NewValue(name, b.Value.Type, b.Value.Sharding);
            scope.Carried.Add((b.Value, inner));
            carriedNames.Add(name);
            scope.Names[name] = b with { Value = inner };
        }
        var errorsBefore = _diags.Count;
        foreach (var s in r.Body) BindStatement(s, scope);
        if (scope.Carried.Count == 0)
        {
            if (_diags.Count == errorsBefore)
                Error(r.Loc, "the repeat body assigns no name defined before it, so nothing flows from one layer to the next");
            return;
        }
        var results = new List<Value>();
        for (int i = 0; i < carriedNames.Count; i++)
        {
            var o = scope.Carried[i].Outer;
            var final = scope.Names[carriedNames[i]].Value;
            if (final is null) return;
            if (!final.Type.Equals(o.Type))
            {
                Error(r.Loc, $"'{carriedNames[i]}' changes type in the repeat body from {o.Type} to {final.Type}");
                return;
            }
            results.Add(final);
        }
        if (_diags.Count > errorsBefore) return;
        var ins = scope.Carried.Select(c => c.Outer).Concat(scope.Stacked.Select(c => c.Outer)).Concat(scope.Invariant.Select(c => c.Outer)).ToList();
        var args = scope.Carried.Select(c => c.Inner).Concat(scope.Stacked.Select(c => c.Inner)).Concat(scope.Invariant.Select(c => c.Inner)).ToImmutableArray();
        var body = new Block(args, scope.Nodes.ToImmutableArray(), results.ToImmutableArray());
        var attrs = GraphBuilder.Attrs(("count", new DimsAttr(ImmutableArray.Create(count.Name))),
            ("carried", new IntAttr(scope.Carried.Count)), ("stacked", new IntAttr(scope.Stacked.Count)));
        var names = carriedNames;
        try
        {
            var outs = _builder.Apply(outer.Nodes, OpTable.Get("repeat"), ins, attrs, names, r.Loc, ImmutableArray.Create(body));
            for (int i = 0; i < outs.Length; i++)
                outer.Names[names[i]] = outer.Names[names[i]] with { Value = outs[i] };
        }
        catch (TypeErrorException e)
        {
            Error(r.Loc, e.Message);
        }
    }

    private static IEnumerable<string> AssignedNames(ImmutableArray<Stmt> body)
    {
        foreach (var s in body)
        {
            if (s is AssignStmt a) foreach (var t in a.Targets) yield return t.Name;
            else if (s is RepeatStmt r) foreach (var n in AssignedNames(r.Body)) yield return n;
        }
    }
}
