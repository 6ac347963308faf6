using System.Collections.Immutable;

namespace PaLM.IR;

/// <summary>
/// What an op's VJP rule (<see cref="OpDef.Vjp"/>) sees and how it emits the backward computation: the primal node,
/// its operands and results as available in the backward block (possibly recomputed or saved, which the rule does not
/// need to know), the cotangents of its results, and a builder appending ordinary IR ops. A rule returns one
/// cotangent per operand: null where the operand needs none (<see cref="Wants"/> is false) or it is zero.
/// </summary>
public sealed class VjpContext
{
    private readonly Func<Value, Value> _primal;
    private readonly Func<int, bool> _wants;
    private readonly ImmutableArray<Value?> _cotangents;
    private readonly Func<OpDef, IReadOnlyList<Value>, ImmutableSortedDictionary<string, Attr>, string, ImmutableArray<Value>> _emit;

    public VjpContext(Node node, Func<Value, Value> primal, ImmutableArray<Value?> cotangents, Func<int, bool> wants,
        Func<OpDef, IReadOnlyList<Value>, ImmutableSortedDictionary<string, Attr>, string, ImmutableArray<Value>> emit,
        IReadOnlyDictionary<string, Dim> dims, Func<Value, IReadOnlyList<Node>?>? readers = null)
    {
        _readers = readers;
        Node = node;
        _primal = primal;
        _cotangents = cotangents;
        _wants = wants;
        _emit = emit;
        Dims = dims;
    }

    private readonly Func<Value, IReadOnlyList<Node>?>? _readers;

    /// <summary>
    /// The forward nodes that read result <paramref name="k"/>, or null when that is unknown or the result also leaves
    /// its block (then its cotangent may come from anywhere). Lets a rule use what its consumers' VJPs guarantee.
    /// </summary>
    public IReadOnlyList<Node>? Readers(int k = 0) => _readers?.Invoke(Node.Outputs[k]);

    /// <summary>The primal (forward) node.</summary>
    public Node Node { get; }

    /// <summary>The graph's declared dims.</summary>
    public IReadOnlyDictionary<string, Dim> Dims { get; }

    /// <summary>Primal operand <paramref name="i"/> as available in the backward block.</summary>
    public Value X(int i) => _primal(Node.Inputs[i]);

    /// <summary>Primal result <paramref name="k"/> as available in the backward block.</summary>
    public Value Y(int k = 0) => _primal(Node.Outputs[k]);

    /// <summary>The cotangent of result <paramref name="k"/>, or null when it is zero.</summary>
    public Value? Dy(int k = 0) => _cotangents[k];

    /// <summary>The cotangent of result <paramref name="k"/>, materialized as zeros when it is zero.</summary>
    public Value DyOrZeros(int k) => _cotangents[k] ?? Zeros(Node.Outputs[k].Type);

    /// <summary>Whether operand <paramref name="i"/> needs a cotangent (it is floating point and depends on a parameter).</summary>
    public bool Wants(int i) => _wants(i);

    public T Attr<T>(string name) where T : Attr => Node.Attr<T>(name);

    /// <summary>Appends <paramref name="op"/> and returns its single result.</summary>
    public Value Op(string op, IReadOnlyList<Value> inputs, params (string Name, Attr Value)[] attrs) =>
        Ops(op, inputs, attrs)[0];

    /// <summary>Appends <paramref name="op"/> and returns all its results.</summary>
    public ImmutableArray<Value> Ops(string op, IReadOnlyList<Value> inputs, params (string Name, Attr Value)[] attrs) =>
        _emit(OpTable.Get(op), inputs, GraphBuilder.Attrs(attrs), "d_" + Node.Outputs[0].Name);

    /// <summary>A rank-0 constant.</summary>
    public Value Const(double value, DType dtype) =>
        _emit(OpTable.Get("constant"), [], GraphBuilder.Attrs(("value", new FloatAttr(value)), ("dtype", new DTypeAttr(dtype))), "c")[0];

    /// <summary>Zeros of type <paramref name="t"/> (a broadcast constant).</summary>
    public Value Zeros(TensorType t) => BroadcastTo(Const(0, t.DType), t);

    /// <summary>
    /// Undoes name broadcasting: sums <paramref name="g"/> over the dims <paramref name="target"/> lacks, then orders
    /// the rest as <paramref name="target"/> does. Every dim of the target must be a dim of g.
    /// </summary>
    public Value SumTo(Value g, TensorType target)
    {
        var extra = g.Type.Dims.Where(d => !target.Has(d.Name)).Select(d => d.Name).ToImmutableArray();
        if (target.Dims.Any(d => !g.Type.Has(d.Name)))
            throw new InvalidOperationException($"vjp of {Node.Op.Name}: cannot sum {g.Type} to {target}");
        if (!extra.IsEmpty) g = Op("sum", [g], ("over", new DimsAttr(extra)));
        return Arrange(g, target);
    }

    /// <summary>Broadcasts <paramref name="g"/> to <paramref name="target"/>'s dims (by name; g's dims must be among them).</summary>
    public Value BroadcastTo(Value g, TensorType target)
    {
        if (g.Type.Rank == target.Rank) return Arrange(g, target);
        return Op("broadcast", [g], ("to", new DimsAttr([.. target.Dims.Select(d => d.Name)])));
    }

    /// <summary><paramref name="g"/> transposed to <paramref name="target"/>'s dim order (same dim names).</summary>
    public Value Arrange(Value g, TensorType target) =>
        g.Type.Dims.Select(d => d.Name).SequenceEqual(target.Dims.Select(d => d.Name)) ? g
            : Op("transpose", [g], ("to", new DimsAttr([.. target.Dims.Select(d => d.Name)])));

    /// <summary>Casts <paramref name="g"/> to <paramref name="dtype"/> if it has another.</summary>
    public Value CastTo(Value g, DType dtype) => g.Type.DType == dtype ? g : Op("cast", [g], ("to", new DTypeAttr(dtype)));
}

/// <summary>Common VJP rules.</summary>
public static class Vjps
{
    /// <summary>For ops with no cotangent to give (integer results, constants, steps): all operands get none.</summary>
    public static IReadOnlyList<Value?> None(VjpContext c) => new Value?[c.Node.Inputs.Length];

    /// <summary>
    /// For ops autodiff must never reach: collectives (autodiff runs on the global graph, before partitioning) and the
    /// gradient ops themselves (palmc takes first derivatives only). The rule names the op and the reason.
    /// </summary>
    public static Func<VjpContext, IReadOnlyList<Value?>> NotDifferentiable(string reason) =>
        c => throw new NotSupportedException($"{c.Node.Op.Name} is not differentiable: {reason}");
}
