using System.Collections.Immutable;

namespace PaLM.IR;

/// <summary>
/// An SSA value: produced once (by a node or as a block argument), typed, with a display name unique in its graph.
/// Identity is by reference; <see cref="Id"/> orders values deterministically.
/// </summary>
public sealed class Value
{
    public Value(int id, string name, TensorType type, Sharding? sharding = null, SourceLoc? loc = null)
    {
        Id = id;
        Name = name;
        Type = type;
        Sharding = sharding;
        Loc = loc;
    }

    public int Id { get; }
    public string Name { get; }
    public TensorType Type { get; }

    /// <summary>The user's sharding annotation, if any (propagation fills the rest later).</summary>
    public Sharding? Sharding { get; }

    /// <summary>Where the value was named in the DSL, if it was.</summary>
    public SourceLoc? Loc { get; }

    public override string ToString() => "%" + Name;
}

/// <summary>One operation: an op from the table applied to values, with attributes and optional nested regions.</summary>
public sealed class Node
{
    public Node(OpDef op, ImmutableArray<Value> inputs, ImmutableArray<Value> outputs,
        ImmutableSortedDictionary<string, Attr>? attrs = null, ImmutableArray<Block> regions = default, SourceLoc? loc = null)
    {
        Op = op;
        Inputs = inputs;
        Outputs = outputs;
        Attrs = attrs ?? ImmutableSortedDictionary<string, Attr>.Empty;
        Regions = regions.IsDefault ? ImmutableArray<Block>.Empty : regions;
        Loc = loc;
    }

    public OpDef Op { get; }
    public ImmutableArray<Value> Inputs { get; }
    public ImmutableArray<Value> Outputs { get; }
    public ImmutableSortedDictionary<string, Attr> Attrs { get; }
    public ImmutableArray<Block> Regions { get; }
    public SourceLoc? Loc { get; }

    public T Attr<T>(string name) where T : Attr =>
        Attrs.TryGetValue(name, out var a) && a is T t ? t : throw new InvalidOperationException($"{Op.Name}: missing attribute '{name}'");

    public override string ToString() => Printer.FormatNode(this);
}

/// <summary>A straight-line list of nodes with arguments and results. Regions are isolated: they see only their arguments.</summary>
public sealed class Block
{
    public Block(ImmutableArray<Value> args, ImmutableArray<Node> nodes, ImmutableArray<Value> results)
    {
        Args = args;
        Nodes = nodes;
        Results = results;
    }

    public ImmutableArray<Value> Args { get; }
    public ImmutableArray<Node> Nodes { get; }
    public ImmutableArray<Value> Results { get; }

    /// <summary>Every node, nested regions included: each node before the nodes of its regions.</summary>
    public IEnumerable<Node> AllNodes()
    {
        foreach (var n in Nodes)
        {
            yield return n;
            foreach (var r in n.Regions)
                foreach (var x in r.AllNodes()) yield return x;
        }
    }

    /// <summary>Every value defined here or in nested regions: arguments, then per node its regions' values and its outputs.</summary>
    public IEnumerable<Value> AllValues()
    {
        foreach (var a in Args) yield return a;
        foreach (var n in Nodes)
        {
            foreach (var r in n.Regions)
                foreach (var v in r.AllValues()) yield return v;
            foreach (var o in n.Outputs) yield return o;
        }
    }
}

/// <summary>How a parameter gets its initial value.</summary>
public sealed record Init(InitKind Kind, double Value)
{
    public string Format() => Kind == InitKind.Normal ? $"normal({IR.Attr.FormatFloat(Value)})" : $"constant({IR.Attr.FormatFloat(Value)})";
}

public enum InitKind { Normal, Constant }

/// <summary>
/// What a graph argument is: a trained parameter, data, or optimizer state (persistent across steps like a parameter,
/// updated by the training step, never differentiated).
/// </summary>
public enum ArgKind { Parameter, Input, State }

/// <summary>
/// A graph argument: a parameter (trained, with an initializer) or an input (data). In a per-device graph made by
/// the SPMD partitioner, <see cref="Spmd"/> says which piece of which global tensor the (local) value is.
/// </summary>
public sealed record GraphArg(Value Value, ArgKind Kind, Init? Init, SpmdArg? Spmd = null);

/// <summary>The global tensor a per-device argument is a piece of, and how it is split over the mesh.</summary>
public sealed record SpmdArg(TensorType GlobalType, Sharding Sharding);

/// <summary>
/// A whole model: declared dims, the mesh, arguments, and the top-level block whose results are the outputs.
/// Layer repetition stays one <c>repeat</c> node whose body is stored once.
/// </summary>
public sealed class Graph
{
    public Graph(string name, ImmutableArray<Dim> dims, Mesh? mesh, ImmutableArray<GraphArg> args, Block body, ImmutableArray<string> outputNames)
    {
        Name = name;
        Dims = dims;
        Mesh = mesh;
        Args = args;
        Body = body;
        OutputNames = outputNames;
        DimsByName = dims.ToImmutableDictionary(d => d.Name);
    }

    public string Name { get; }

    /// <summary>Every declared dim, in declaration order.</summary>
    public ImmutableArray<Dim> Dims { get; }

    public ImmutableDictionary<string, Dim> DimsByName { get; }

    public Mesh? Mesh { get; }
    public ImmutableArray<GraphArg> Args { get; }
    public Block Body { get; }

    /// <summary>The user's names for the outputs, in order (the values are <c>Body.Results</c>).</summary>
    public ImmutableArray<string> OutputNames { get; }

    /// <summary>In a per-device graph: for each output, the global tensor its (local) result is a piece of.</summary>
    public ImmutableArray<SpmdArg> OutputSpmd { get; init; } = [];

    /// <summary>
    /// For a training step: per output, the index in <see cref="Args"/> of the parameter or state it replaces for the
    /// next step (-1: none), as XLA's input/output aliasing. Empty for a graph that updates nothing.
    /// </summary>
    public ImmutableArray<int> OutputUpdates { get; init; } = [];

    public IEnumerable<GraphArg> Parameters => Args.Where(a => a.Kind == ArgKind.Parameter);
    public IEnumerable<GraphArg> Inputs => Args.Where(a => a.Kind == ArgKind.Input);

    /// <summary>Optimizer state arguments (training steps only).</summary>
    public IEnumerable<GraphArg> States => Args.Where(a => a.Kind == ArgKind.State);

    /// <summary>What persists across steps, in argument order: parameters and optimizer state.</summary>
    public IEnumerable<GraphArg> Persistent => Args.Where(a => a.Kind != ArgKind.Input);

    public override string ToString() => Printer.Print(this);
}
