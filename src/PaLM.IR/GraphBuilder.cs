using System.Collections.Immutable;

namespace PaLM.IR;

/// <summary>
/// Builds graphs: hands out value ids and unique names (<c>x</c>, <c>x.1</c>, ...), and applies ops through the op
/// table so every node is type-checked as it is made.
/// </summary>
public sealed class GraphBuilder(IReadOnlyDictionary<string, Dim> dims)
{
    private readonly Dictionary<string, int> _nameCounts = new(StringComparer.Ordinal);
    private int _nextId;

    /// <summary>
    /// A builder that adds to <paramref name="g"/>: new values get ids and names no value of <paramref name="g"/> has
    /// (passes that rewrite a graph keep the values they do not touch). <paramref name="dims"/> may extend g's dims.
    /// </summary>
    public static GraphBuilder Continuing(Graph g, IReadOnlyDictionary<string, Dim>? dims = null)
    {
        var b = new GraphBuilder(dims ?? g.DimsByName);
        foreach (var v in g.Body.AllValues())
        {
            b._nameCounts.TryAdd(v.Name, 1);
            b._nextId = Math.Max(b._nextId, v.Id + 1);
        }
        return b;
    }

    public IReadOnlyDictionary<string, Dim> Dims { get; } = dims;

    public string UniqueName(string hint)
    {
        if (!_nameCounts.TryGetValue(hint, out var n))
        {
            _nameCounts[hint] = 1;
            return hint;
        }
        string name;
        do { name = $"{hint}.{n++}"; } while (_nameCounts.ContainsKey(name));
        _nameCounts[hint] = n;
        _nameCounts[name] = 1;
        return name;
    }

    public Value NewValue(string hint, TensorType type, Sharding? sharding = null, SourceLoc? loc = null) =>
        new(_nextId++, UniqueName(hint), type, sharding, loc);

    /// <summary>Infers output types with the op's rule (throws <see cref="TypeErrorException"/>), then appends the node.
    /// A user sharding annotation, if given, goes on the first output.</summary>
    public ImmutableArray<Value> Apply(List<Node> block, OpDef op, IReadOnlyList<Value> inputs,
        ImmutableSortedDictionary<string, Attr> attrs, IReadOnlyList<string> hints, SourceLoc? loc = null,
        ImmutableArray<Block> regions = default, Sharding? sharding = null)
    {
        var types = op.Infer(new InferContext(op, inputs.Select(v => v.Type).ToImmutableArray(), attrs, Dims, regions));
        var outs = types.Select((t, i) => NewValue(i < hints.Count ? hints[i] : hints[^1], t, i == 0 ? sharding : null, loc)).ToImmutableArray();
        block.Add(new Node(op, inputs.ToImmutableArray(), outs, attrs, regions, loc));
        return outs;
    }

    /// <summary>Makes an attribute dictionary from pairs.</summary>
    public static ImmutableSortedDictionary<string, Attr> Attrs(params (string Name, Attr Value)[] attrs) =>
        attrs.ToImmutableSortedDictionary(a => a.Name, a => a.Value, StringComparer.Ordinal);
}
