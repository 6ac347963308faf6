using System.Collections.Immutable;

namespace PaLM.IR;

/// <summary>Kinds of attribute a DSL call can supply; the binder converts source syntax by this kind.</summary>
public enum AttrKind { Dim, Dims, Float, Int, DType, DimLists }

/// <summary>One attribute an op accepts. A null default means required.</summary>
public sealed record AttrSpec(string Name, AttrKind Kind, Attr? Default = null, bool FromSyntax = false);

/// <summary>What an op takes: operand count range and attributes.</summary>
public sealed record OpSignature(int MinOperands, int MaxOperands, ImmutableArray<AttrSpec> Attrs)
{
    public const int Variadic = int.MaxValue;

    public AttrSpec? FindAttr(string name) => Attrs.FirstOrDefault(a => a.Name == name);

    /// <summary>How many operands, in words: "1", "1 to 2", "at least 2".</summary>
    public string OperandCount =>
        MaxOperands == Variadic ? $"at least {MinOperands}" : MinOperands == MaxOperands ? $"{MinOperands}" : $"{MinOperands} to {MaxOperands}";
}

/// <summary>A type error found by an op's inference rule; the caller attaches the source location.</summary>
public sealed class TypeErrorException(string message) : Exception(message);

/// <summary>What an inference rule sees: operand types, attributes and the graph's declared dims.</summary>
public sealed class InferContext(OpDef op, ImmutableArray<TensorType> inputs, ImmutableSortedDictionary<string, Attr> attrs,
    IReadOnlyDictionary<string, Dim> dims, ImmutableArray<Block> regions = default)
{
    /// <summary>The node's regions (repeat's body, whose per-iteration results become stacked results).</summary>
    public ImmutableArray<Block> Regions { get; } = regions.IsDefault ? [] : regions;

    public OpDef Op { get; } = op;
    public ImmutableArray<TensorType> Inputs { get; } = inputs;
    public ImmutableSortedDictionary<string, Attr> Attrs { get; } = attrs;
    public IReadOnlyDictionary<string, Dim> Dims { get; } = dims;

    public static TypeErrorException Fail(string message) => new(message);

    public T Attr<T>(string name) where T : Attr =>
        Attrs.TryGetValue(name, out var a) && a is T t ? t : throw Fail($"{Op.Name}: missing or mistyped attribute '{name}'");

    public double Float(string name) => Attr<FloatAttr>(name).Value;

    public long Int(string name) => Attr<IntAttr>(name).Value;

    public ImmutableArray<string> DimNames(string name) => Attr<DimsAttr>(name).Names;

    /// <summary>A declared dim by name (attributes name dims; sizes come from the declarations).</summary>
    public Dim Dim(string name) =>
        Dims.TryGetValue(name, out var d) ? d : throw Fail($"unknown dim '{name}'");

    /// <summary>The declared dim named by attribute <paramref name="attr"/>, which must name exactly one.</summary>
    public Dim OneDim(string attr)
    {
        var names = DimNames(attr);
        if (names.Length != 1) throw Fail($"{Op.Name}: '{attr}' names one dim, got {names.Length}");
        return Dim(names[0]);
    }

    /// <summary>The single dim named by attribute <paramref name="attr"/>, which must be a dim of operand <paramref name="operand"/>.</summary>
    public int AxisOf(int operand, string attr)
    {
        var names = DimNames(attr);
        if (names.Length != 1) throw Fail($"{Op.Name}: '{attr}' names one dim, got {names.Length}");
        var t = Inputs[operand];
        var i = t.IndexOf(names[0]);
        if (i < 0) throw Fail($"{Op.Name}: dim '{names[0]}' ({attr}=) is not a dim of operand {operand + 1} {t}");
        return i;
    }

    public void SameDType(string what)
    {
        for (int i = 1; i < Inputs.Length; i++)
            if (Inputs[i].DType != Inputs[0].DType)
                throw Fail($"{Op.Name}: {what} dtypes differ: {Inputs[0]} and {Inputs[i]}");
    }

    public void RequireFloat(int operand)
    {
        if (!DTypes.IsFloat(Inputs[operand].DType))
            throw Fail($"{Op.Name}: operand {operand + 1} must be floating point, got {Inputs[operand]}");
    }
}

/// <summary>
/// How an op becomes a call into the runtime facade (<c>PaLM.Runtime.Rt</c>): data, not C#, so the IR stays free of
/// Roslyn and code generation reads one lowering per op from the table.
/// </summary>
public abstract record Lowering;

/// <summary>A call <c>Rt.Method(args...)</c>; returns a tensor, or a tensor array when the op has several outputs.</summary>
public sealed record RtCall(string Method, ImmutableArray<LArg> Args) : Lowering
{
    public RtCall(string method, params LArg[] args) : this(method, args.ToImmutableArray()) { }
}

/// <summary>Structured control flow (a counted loop over a region); code generation emits the loop.</summary>
public sealed record LoopLowering : Lowering;

/// <summary>An argument of a lowered call.</summary>
public abstract record LArg
{
    public static LArg In(int i) => new LInput(i);
    public static LArg Lit(object v) => new LLiteral(v);
}

/// <summary>Operand <c>Index</c> of the node.</summary>
public sealed record LInput(int Index) : LArg;

/// <summary>All operands as one array argument.</summary>
public sealed record LAllInputs : LArg;

/// <summary>A literal: long, double, string, long[], string[] or <see cref="DType"/>.</summary>
public sealed record LLiteral(object Value) : LArg;

/// <summary>The device this copy of an SPMD program runs on (<c>PaLM.Runtime.DeviceContext</c>): collectives need it.</summary>
public sealed record LDevice : LArg;

/// <summary>A nested runtime call (e.g. aligning a broadcast operand).</summary>
public sealed record LNested(RtCall Call) : LArg;

/// <summary>What a lowering rule sees.</summary>
public sealed record LowerContext(Node Node)
{
    public TensorType In(int i) => Node.Inputs[i].Type;
    public TensorType Out(int i = 0) => Node.Outputs[i].Type;
    public long Axis(int operand, string attr) => In(operand).IndexOf(Node.Attr<DimsAttr>(attr).Names[0]);
}

/// <summary>
/// One op and every rule about it, registered once (see <see cref="OpTable"/>): its signature, type inference,
/// FLOP count and lowering. Later stages (sharding, VJP) add their rules here, never as switches elsewhere.
/// </summary>
public sealed class OpDef
{
    public required string Name { get; init; }
    public required string Doc { get; init; }
    public required OpSignature Signature { get; init; }

    /// <summary>Infers output types from operand types and attributes; throws <see cref="TypeErrorException"/>.</summary>
    public required Func<InferContext, ImmutableArray<TensorType>> Infer { get; init; }

    /// <summary>FLOPs of one execution of the node, not counting nested regions.</summary>
    public required Func<Node, long> Flops { get; init; }

    /// <summary>True for ops with a body region (repeat): structured control flow, written as a statement in the DSL.</summary>
    public bool HasRegion { get; init; }

    /// <summary>True for contractions (einsum): counted as matmul FLOPs.</summary>
    public bool IsMatmul { get; init; }

    /// <summary>
    /// True for ops that move no data at run time: views of their operand (reshape, split, broadcast, transpose, a
    /// local shard slice) or annotations (sharding_constraint). The cost model charges them no memory traffic.
    /// </summary>
    public bool IsView { get; init; }

    public required Func<LowerContext, Lowering> Lower { get; init; }

    /// <summary>
    /// The runtime method that computes this op into its first argument's buffer and returns it (<c>a.add_(b)</c>),
    /// taking the same arguments as <see cref="Lower"/>'s call; null when there is none. Code generation uses it when
    /// that operand's buffer is dead after this op (buffer donation, see <c>PaLM.CodeGen.BufferReuse</c>).
    /// Ops with such a method always return a fresh buffer from their out-of-place form.
    /// </summary>
    public string? InPlace { get; init; }

    /// <summary>
    /// Whether the op's result is always a new buffer that aliases no operand. Buffer donation needs this of every
    /// earlier reader of a buffer it overwrites (no view of it may survive); ops with an <see cref="InPlace"/> form
    /// are so by definition, this marks the others (reductions that never return their operand).
    /// </summary>
    public bool FreshBuffer { get; init; }

    /// <summary>
    /// The span primitive (<c>PaLM.Runtime.Ew</c>'s method of this name) that computes this elementwise op inside a
    /// fused loop, or null when the op cannot join one. Code generation fuses chains of such ops over operands of one
    /// shape into a single loop (<c>PaLM.CodeGen.LoopFusion</c>).
    /// </summary>
    public string? LoopPrimitive { get; init; }

    /// <summary>Whether the operands of a two-operand op may be swapped (add, mul): the second operand's buffer can be donated too.</summary>
    public bool Commutative { get; init; }

    /// <summary>The op's sharding rule (see <see cref="ShardingRule"/>): how propagation and the partitioner see it.</summary>
    public required Func<Node, ShardingRule> Sharding { get; init; }

    /// <summary>Whether a partial (pending-sum) operand may flow through to a partial result, delaying its reduction.</summary>
    public Linearity Linearity { get; init; }

    /// <summary>
    /// The op's reverse-mode rule: operand cotangents from result cotangents, as IR ops (see <see cref="VjpContext"/>).
    /// <c>repeat</c>'s is structural (autodiff transposes the loop itself) and never called.
    /// </summary>
    public required Func<VjpContext, IReadOnlyList<Value?>> Vjp { get; init; }

    public override string ToString() => Name;
}
