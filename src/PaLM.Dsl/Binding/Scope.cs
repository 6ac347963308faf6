using PaLM.IR;

namespace PaLM.Dsl.Binding;

/// <summary>What a name means in a scope. A null value marks a name whose definition had an error (no cascades).</summary>
internal sealed record Binding(Value? Value, ArgKind? Kind, SourceLoc Loc);

/// <summary>
/// A name scope: the top level of the graph, or the body of a <c>repeat</c>. A body sees outer names through
/// invariant captures and per-layer parameters through stacked operands, so its region stays isolated.
/// </summary>
internal sealed class Scope(Scope? parent, Dim? count)
{
    public Scope? Parent { get; } = parent;

    /// <summary>The repeat count dim (null at top level).</summary>
    public Dim? Count { get; } = count;

    public Dictionary<string, Binding> Names { get; } = new(StringComparer.Ordinal);
    public List<Node> Nodes { get; } = new();

    public List<(Value Outer, Value Inner)> Carried { get; } = new();
    public List<(Value Outer, Value Inner)> Stacked { get; } = new();
    public List<(Value Outer, Value Inner)> Invariant { get; } = new();

    public bool IsTop => Parent is null;
}
