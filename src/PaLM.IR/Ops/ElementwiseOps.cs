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
        foreach (var (name, method, doc) in new[]
        {
            ("add", "Add", "a + b"), ("sub", "Sub", "a - b"), ("mul", "Mul", "a * b"), ("div", "Div", "a / b"),
            ("maximum", "Maximum", "elementwise max(a, b)"),
        })
            add(Binary(name, method, doc));

        foreach (var (name, method, floatOnly) in new[]
        {
            ("neg", "Neg", false), ("exp", "Exp", true), ("log", "Log", true), ("rsqrt", "Rsqrt", true), ("sqrt", "Sqrt", true),
            ("tanh", "Tanh", true), ("sigmoid", "Sigmoid", true), ("silu", "Silu", true), ("square", "Square", false),
        })
            add(Unary(name, method, floatOnly));

        add(new OpDef
        {
            Name = "constant",
            Doc = "a rank-0 constant of the given dtype",
            Signature = Sig(0, 0, Float("value"), new AttrSpec("dtype", AttrKind.DType, new DTypeAttr(DType.F32))),
            Infer = c => One(new TensorType(c.Attr<DTypeAttr>("dtype").Value)),
            Flops = _ => 0,
            Lower = c => new RtCall("Constant", LArg.Lit(c.Node.Attr<FloatAttr>("value").Value), LArg.Lit(c.Node.Attr<DTypeAttr>("dtype").Value)),
            Sharding = n => ShardingRule.ByName(n),
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

    private static OpDef Binary(string name, string method, string doc) => new()
    {
        Name = name,
        Doc = doc + ", broadcasting by dim name",
        Signature = Sig(2, 2),
        Infer = c => One(BroadcastType(c)),
        Flops = OutNumel,
        Lower = c => new RtCall(method, AlignTo(c, 0, c.Out()), AlignTo(c, 1, c.Out())),
        Sharding = n => ShardingRule.ByName(n),
        Linearity = name switch { "add" or "sub" => Linearity.Sum, "mul" => Linearity.Product, "div" => Linearity.Numerator, _ => Linearity.None },
    };

    private static OpDef Unary(string name, string method, bool floatOnly) => new()
    {
        Name = name,
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
    };
}
