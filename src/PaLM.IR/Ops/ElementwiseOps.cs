using System.Collections.Immutable;
using static PaLM.IR.OpHelpers;

namespace PaLM.IR;

/// <summary>
/// Elementwise ops. Binary ops broadcast by dim name: the result has the larger operand's dims when one operand's dims
/// are a subset of the other's, otherwise the first operand's dims followed by the second's new ones.
/// Rank-0 operands (constants) broadcast everywhere.
/// </summary>
internal static class ElementwiseOps
{
    public static void Register(Action<OpDef> add)
    {
        // The in-place forms write into the first argument (a.add_(b)); see OpDef.InPlace.
        foreach (var (name, method, doc, inPlace, commutative) in new[]
        {
            ("add", "Add", "a + b", true, true), ("sub", "Sub", "a - b", true, false), ("mul", "Mul", "a * b", true, true),
            ("div", "Div", "a / b", true, false),
            ("maximum", "Maximum", "elementwise max(a, b)", false, true), ("minimum", "Minimum", "elementwise min(a, b)", false, true),
        })
            add(Binary(name, method, doc, inPlace ? method + "InPlace" : null, commutative));

        foreach (var (name, method, floatOnly, inPlace) in new[]
        {
            ("neg", "Neg", false, true), ("exp", "Exp", true, true), ("log", "Log", true, true), ("rsqrt", "Rsqrt", true, true),
            ("sqrt", "Sqrt", true, true), ("tanh", "Tanh", true, true), ("sigmoid", "Sigmoid", true, true), ("silu", "Silu", true, true),
            ("square", "Square", false, true), ("step", "Step", false, false),
        })
            add(Unary(name, method, floatOnly, inPlace ? method + "InPlace" : null));

        add(new OpDef
        {
            Name = "constant",
            IsView = true,
            Doc = "a rank-0 constant of the given dtype",
            Signature = Sig(0, 0, Float("value"), new AttrSpec("dtype", AttrKind.DType, new DTypeAttr(DType.F32))),
            Infer = c => One(new TensorType(c.Attr<DTypeAttr>("dtype").Value)),
            Flops = _ => 0,
            Lower = c => new RtCall("Constant", LArg.Lit(c.Node.Attr<FloatAttr>("value").Value), LArg.Lit(c.Node.Attr<DTypeAttr>("dtype").Value)),
            Sharding = n => ShardingRule.ByName(n),
            Vjp = Vjps.None,
        });

        add(new OpDef
        {
            Name = "cast",
            Doc = "converts to another dtype",
            Signature = Sig(1, 1, new AttrSpec("to", AttrKind.DType)),
            Infer = c => One(c.Inputs[0].WithDType(c.Attr<DTypeAttr>("to").Value)),
            Flops = _ => 0,
            Lower = c => new RtCall("Cast", LArg.In(0), LArg.Lit(c.Node.Attr<DTypeAttr>("to").Value)),
            // Not linear for the partitioner: rounding each device's summand to a narrower type and then summing is
            // not the rounded sum, so pending sums are reduced before a cast.
            Sharding = n => ShardingRule.ByName(n),
            Vjp = c => [c.Wants(0) && c.Dy() is { } dy ? c.CastTo(dy, c.Node.Inputs[0].Type.DType) : null],
        });

        add(new OpDef
        {
            Name = "broadcast",
            IsView = true,
            Doc = "repeats x along the dims of 'to' it lacks; the result has exactly the dims of 'to', in that order",
            Signature = Sig(1, 1, Dims("to")),
            Infer = c =>
            {
                var to = c.DimNames("to");
                var x = c.Inputs[0];
                if (to.Distinct().Count() != to.Length) throw InferContext.Fail($"broadcast: a dim is named twice in [{string.Join(", ", to)}]");
                foreach (var d in x.Dims)
                    if (!to.Contains(d.Name)) throw InferContext.Fail($"broadcast: dim '{d.Name}' of {x} is not in [{string.Join(", ", to)}]");
                return One(x.WithDims(to.Select(c.Dim)));
            },
            Flops = _ => 0,
            Lower = c => new RtCall("Broadcast", AlignTo(c, 0, c.Out()), LArg.Lit(c.Out().Shape)),
            Sharding = n => ShardingRule.ByName(n),
            Linearity = Linearity.Unary,
            Vjp = c => [c.Wants(0) && c.Dy() is { } dy ? c.SumTo(dy, c.Node.Inputs[0].Type) : null],
        });

        add(new OpDef
        {
            Name = "sharding_constraint",
            IsView = true,
            Doc = "x unchanged; its result's annotation pins a layout (JAX's with_sharding_constraint)",
            Signature = Sig(1, 1),
            Infer = c => One(c.Inputs[0]),
            Flops = _ => 0,
            Lower = _ => new RtCall("Identity", LArg.In(0)),
            Sharding = n => ShardingRule.ByName(n),
            Linearity = Linearity.Unary,
            Vjp = c => [c.Wants(0) ? c.Dy() : null],
        });

        add(new OpDef
        {
            Name = "silu_grad",
            LoopPrimitive = "SiluGrad",
            Doc = "the derivative of silu at x times dy: silu_grad(dy, x) = dy * s * (1 + x * (1 - s)), s = sigmoid(x)",
            Signature = Sig(2, 2),
            Infer = c =>
            {
                c.RequireFloat(0);
                c.SameDType("operand");
                if (!c.Inputs[0].Equals(c.Inputs[1])) throw InferContext.Fail($"silu_grad: dy {c.Inputs[0]} and x {c.Inputs[1]} differ");
                return One(c.Inputs[0]);
            },
            Flops = n => 6 * OutNumel(n),
            Lower = _ => new RtCall("SiluGrad", LArg.In(0), LArg.In(1)),
            Sharding = n => ShardingRule.ByName(n),
            Linearity = Linearity.Numerator,
            Vjp = Vjps.NotDifferentiable("palmc takes first derivatives only"),
        });
    }

    /// <summary>The broadcast result type of a binary elementwise op, or a type error naming the conflict.</summary>
    public static TensorType BroadcastType(InferContext c)
    {
        c.SameDType("operand");
        var (a, b) = (c.Inputs[0], c.Inputs[1]);
        if (b.Dims.All(d => a.Has(d.Name))) return a;
        if (a.Dims.All(d => b.Has(d.Name))) return b;
        return a.WithDims(a.Dims.Concat(b.Dims.Where(d => !a.Has(d.Name))));
    }

    private static OpDef Binary(string name, string method, string doc, string? inPlace, bool commutative) => new()
    {
        Name = name,
        InPlace = inPlace,
        Commutative = commutative,
        LoopPrimitive = method,
        Doc = doc + ", broadcasting by dim name",
        Signature = Sig(2, 2),
        Infer = c => One(BroadcastType(c)),
        Flops = OutNumel,
        Lower = c => new RtCall(method, AlignTo(c, 0, c.Out()), AlignTo(c, 1, c.Out())),
        Sharding = n => ShardingRule.ByName(n),
        Linearity = name switch { "add" or "sub" => Linearity.Sum, "mul" => Linearity.Product, "div" => Linearity.Numerator, _ => Linearity.None },
        Vjp = c => BinaryVjp(name, c),
    };

    /// <summary>Cotangents of a broadcasting binary op: each is summed back over the dims its operand lacks.</summary>
    private static IReadOnlyList<Value?> BinaryVjp(string name, VjpContext c)
    {
        if (c.Dy() is not { } dy) return Vjps.None(c);
        var (ta, tb) = (c.Node.Inputs[0].Type, c.Node.Inputs[1].Type);
        Value? A(Func<Value> f) => c.Wants(0) ? c.SumTo(f(), ta) : null;
        Value? B(Func<Value> f) => c.Wants(1) ? c.SumTo(f(), tb) : null;
        switch (name)
        {
            case "add": return [A(() => dy), B(() => dy)];
            case "sub": return [A(() => dy), B(() => c.Op("neg", [dy]))];
            case "mul": return [A(() => c.Op("mul", [dy, c.X(1)])), B(() => c.Op("mul", [dy, c.X(0)]))];
            case "div":
                // d(a/b)/db = -a/b^2 = -y/b
                return [A(() => c.Op("div", [dy, c.X(1)])), B(() => c.Op("neg", [c.Op("div", [c.Op("mul", [dy, c.Y()]), c.X(1)])]))];
            case "maximum" or "minimum":
                {
                    // The result takes a where a >= b (maximum) or a <= b (minimum); ties go to a.
                    var diff = name == "maximum" ? c.Op("sub", [c.X(0), c.X(1)]) : c.Op("sub", [c.X(1), c.X(0)]);
                    var toA = c.Op("mul", [dy, c.Op("step", [diff])]);
                    return [A(() => toA), B(() => c.Op("sub", [dy, toA]))];
                }
            default: throw new InvalidOperationException($"no VJP for binary op {name}");
        }
    }

    private static OpDef Unary(string name, string method, bool floatOnly, string? inPlace) => new()
    {
        Name = name,
        InPlace = inPlace,
        LoopPrimitive = name == "step" ? null : method,     // step: no vector primitive; it is rare (max/min VJPs)
        Doc = $"elementwise {name}(x)",
        Signature = Sig(1, 1),
        Infer = c =>
        {
            if (floatOnly) c.RequireFloat(0);
            return One(c.Inputs[0]);
        },
        Flops = OutNumel,
        Lower = _ => new RtCall(method, LArg.In(0)),
        Sharding = n => ShardingRule.ByName(n),
        Linearity = name == "neg" ? Linearity.Unary : Linearity.None,
        Vjp = c => [c.Wants(0) && c.Dy() is { } dy ? UnaryVjp(name, c, dy) : null],
    };

    private static Value? UnaryVjp(string name, VjpContext c, Value dy)
    {
        var t = c.Node.Outputs[0].Type.DType;
        Value K(double v) => c.Const(v, t);
        switch (name)
        {
            case "neg": return c.Op("neg", [dy]);
            case "exp": return c.Op("mul", [dy, c.Y()]);
            case "log": return c.Op("div", [dy, c.X(0)]);
            case "rsqrt":
                {
                    // d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
                    var y = c.Y();
                    return c.Op("mul", [dy, c.Op("mul", [c.Op("mul", [c.Op("square", [y]), y]), K(-0.5)])]);
                }
            case "sqrt": return c.Op("div", [c.Op("mul", [dy, K(0.5)]), c.Y()]);
            case "tanh": return c.Op("mul", [dy, c.Op("sub", [K(1), c.Op("square", [c.Y()])])]);
            case "sigmoid": { var y = c.Y(); return c.Op("mul", [dy, c.Op("mul", [y, c.Op("sub", [K(1), y])])]); }
            case "silu": return c.Op("silu_grad", [dy, c.X(0)]);
            case "square": return c.Op("mul", [dy, c.Op("mul", [c.X(0), K(2)])]);
            case "step": return null;                    // piecewise constant: zero almost everywhere
            default: throw new InvalidOperationException($"no VJP for unary op {name}");
        }
    }
}
