using System.Collections.Immutable;
using Google.Protobuf;
using PaLM.IR.Proto;

namespace PaLM.IR;

/// <summary>A protobuf file that is not a valid palmc graph.</summary>
public sealed class IrFormatException(string message) : Exception(message);

/// <summary>Reads and writes graphs as protobuf (binary or JSON). Reading verifies the graph.</summary>
public static class Serialization
{
    public const uint Version = 1;

    public static byte[] ToBytes(Graph g) => ToProto(g).ToByteArray();

    public static string ToJson(Graph g) => new JsonFormatter(JsonFormatter.Settings.Default.WithIndentation()).Format(ToProto(g));

    public static Graph FromBytes(byte[] bytes)
    {
        GraphProto p;
        try { p = GraphProto.Parser.ParseFrom(bytes); }
        catch (InvalidProtocolBufferException e) { throw new IrFormatException($"not a palmc IR protobuf: {e.Message}"); }
        return FromProto(p);
    }

    public static Graph FromJson(string json)
    {
        GraphProto p;
        try { p = JsonParser.Default.Parse<GraphProto>(json); }
        catch (Exception e) when (e is InvalidProtocolBufferException or InvalidJsonException) { throw new IrFormatException($"not a palmc IR JSON: {e.Message}"); }
        return FromProto(p);
    }

    internal static GraphProto ToProto(Graph g)
    {
        // Per-device graphs are a compile-time product (the source graph plus a mesh reproduces them); the format keeps
        // source graphs only, so saving one is refused rather than silently dropping its SPMD facts.
        if (g.Args.Any(a => a.Spmd is not null))
            throw new InvalidOperationException($"graph '{g.Name}' is a per-device (partitioned) graph; save the source graph instead");
        var p = new GraphProto { Version = Version, Name = g.Name, Body = Block(g.Body) };
        p.Dims.AddRange(g.Dims.Select(d => new DimProto { Name = d.Name, Size = d.Size }));
        if (g.Mesh is { } m)
        {
            p.Mesh = new MeshProto();
            p.Mesh.Axes.AddRange(m.Axes.Select(a => new DimProto { Name = a.Name, Size = a.Size }));
        }
        foreach (var a in g.Args)
            p.Args.Add(new ArgProto
            {
                Value = Val(a.Value),
                IsInput = a.Kind == ArgKind.Input,
                IsState = a.Kind == ArgKind.State,
                Init = a.Init is { } i ? new InitProto { Kind = i.Kind == InitKind.Normal ? InitProto.Types.Kind.Normal : InitProto.Types.Kind.Constant, Value = i.Value } : null,
            });
        p.OutputNames.AddRange(g.OutputNames);
        p.OutputUpdates.AddRange(g.OutputUpdates);
        return p;
    }

    private static BlockProto Block(Block b)
    {
        var p = new BlockProto();
        p.Args.AddRange(b.Args.Select(Val));
        foreach (var n in b.Nodes)
        {
            var np = new NodeProto { Op = n.Op.Name, Loc = Loc(n.Loc) };
            np.Inputs.AddRange(n.Inputs.Select(v => v.Id));
            np.Outputs.AddRange(n.Outputs.Select(Val));
            foreach (var (k, a) in n.Attrs) np.Attrs[k] = Attr(a);
            np.Regions.AddRange(n.Regions.Select(Block));
            p.Nodes.Add(np);
        }
        p.Results.AddRange(b.Results.Select(v => v.Id));
        return p;
    }

    private static ValueProto Val(Value v)
    {
        var p = new ValueProto { Id = v.Id, Name = v.Name, Type = new TypeProto { Dtype = (DTypeProto)v.Type.DType }, Loc = Loc(v.Loc) };
        p.Type.Dims.AddRange(v.Type.Dims.Select(d => d.Name));
        if (v.Sharding is { } s)
        {
            p.Sharding = new ShardingProto();
            p.Sharding.Dims.AddRange(s.DimAxes.Select(l => Strings(l)));
        }
        return p;
    }

    private static StringList Strings(IEnumerable<string> items)
    {
        var l = new StringList();
        l.Items.AddRange(items);
        return l;
    }

    private static LocProto? Loc(SourceLoc? l) => l is null ? null : new LocProto { File = l.File, Line = l.Line, Column = l.Column };

    private static AttrProto Attr(Attr a) => a switch
    {
        IntAttr i => new AttrProto { I = i.Value },
        FloatAttr f => new AttrProto { F = f.Value },
        StringAttr s => new AttrProto { S = s.Value },
        DTypeAttr t => new AttrProto { Dtype = (DTypeProto)t.Value },
        DimsAttr d => new AttrProto { Dims = Strings(d.Names) },
        DimListsAttr d => new AttrProto { DimLists = Lists(d) },
        _ => throw new InvalidOperationException($"unknown attribute {a.GetType().Name}"),
    };

    private static DimListsProto Lists(DimListsAttr d)
    {
        var p = new DimListsProto();
        p.Lists.AddRange(d.Lists.Select(l => Strings(l)));
        return p;
    }

    internal static Graph FromProto(GraphProto p)
    {
        if (p.Version != Version) throw new IrFormatException($"IR format version {p.Version}, this palmc reads {Version}");
        var dims = p.Dims.Select(d => new Dim(d.Name, d.Size)).ToImmutableArray();
        if (dims.GroupBy(d => d.Name).FirstOrDefault(g => g.Count() > 1) is { } dup)
            throw new IrFormatException($"dim '{dup.Key}' is declared {dup.Count()} times");
        if (p.Mesh is not null && p.Mesh.Axes.GroupBy(a => a.Name).FirstOrDefault(g => g.Count() > 1) is { } dupAxis)
            throw new IrFormatException($"mesh axis '{dupAxis.Key}' is declared {dupAxis.Count()} times");
        var reader = new Reader(dims.GroupBy(d => d.Name).ToDictionary(g => g.Key, g => g.First()));
        var mesh = p.Mesh is null ? null : new Mesh(p.Mesh.Axes.Select(a => new MeshAxis(a.Name, a.Size)).ToImmutableArray());
        var args = p.Args.Select(a => new GraphArg(reader.Define(a.Value ?? throw new IrFormatException("a graph argument has no value")), a.IsInput ? ArgKind.Input : a.IsState ? ArgKind.State : ArgKind.Parameter,
            a.Init is null ? null : new Init(a.Init.Kind == InitProto.Types.Kind.Normal ? InitKind.Normal : InitKind.Constant, a.Init.Value))).ToImmutableArray();
        if (p.Body is null) throw new IrFormatException("graph has no body");
        var body = reader.Block(p.Body, args.Select(a => a.Value).ToImmutableArray());
        if (p.OutputUpdates.Count != 0 && (p.OutputUpdates.Count != p.OutputNames.Count || p.OutputUpdates.Any(i => i < -1 || i >= args.Length)))
            throw new IrFormatException("output_updates must give one argument index (or -1) per output");
        var g = new Graph(p.Name, dims, mesh, args, body, p.OutputNames.ToImmutableArray()) { OutputUpdates = [.. p.OutputUpdates] };
        try { Verifier.Verify(g); }
        catch (VerifyException e) { throw new IrFormatException(e.Message); }
        return g;
    }

    private sealed class Reader(Dictionary<string, Dim> dims)
    {
        private readonly Dictionary<int, Value> _values = new();

        public Value Define(ValueProto v)
        {
            if (v.Type is null) throw new IrFormatException($"value {v.Name} has no type");
            var type = new TensorType(DTypeOf(v.Type.Dtype), v.Type.Dims.Select(n =>
                dims.TryGetValue(n, out var d) ? d : throw new IrFormatException($"value {v.Name} uses undeclared dim '{n}'")).ToImmutableArray());
            var sharding = v.Sharding is null ? null : new Sharding(v.Sharding.Dims.Select(l => l.Items.ToImmutableArray()).ToImmutableArray());
            var value = new Value(v.Id, v.Name, type, sharding, v.Loc is null ? null : new SourceLoc(v.Loc.File, v.Loc.Line, v.Loc.Column));
            if (!_values.TryAdd(v.Id, value)) throw new IrFormatException($"value id {v.Id} defined twice");
            return value;
        }

        private static DType DTypeOf(DTypeProto t) =>
            Enum.IsDefined((DType)t) ? (DType)t : throw new IrFormatException($"unknown dtype {(int)t}");

        private Value Use(int id) => _values.TryGetValue(id, out var v) ? v : throw new IrFormatException($"value id {id} used before it is defined");

        public Block Block(BlockProto b, ImmutableArray<Value>? args = null)
        {
            var blockArgs = args ?? b.Args.Select(Define).ToImmutableArray();
            var nodes = ImmutableArray.CreateBuilder<Node>();
            foreach (var n in b.Nodes)
            {
                if (!OpTable.TryGet(n.Op, out var op)) throw new IrFormatException($"unknown op '{n.Op}'");
                var inputs = n.Inputs.Select(Use).ToImmutableArray();
                var regions = n.Regions.Select(r => Block(r)).ToImmutableArray();
                var outputs = n.Outputs.Select(Define).ToImmutableArray();
                var attrs = n.Attrs.ToImmutableSortedDictionary(kv => kv.Key, kv => Attr(kv.Value), StringComparer.Ordinal);
                nodes.Add(new Node(op, inputs, outputs, attrs, regions, n.Loc is null ? null : new SourceLoc(n.Loc.File, n.Loc.Line, n.Loc.Column)));
            }
            return new Block(blockArgs, nodes.ToImmutable(), b.Results.Select(Use).ToImmutableArray());
        }

        private static Attr Attr(AttrProto a) => a.KindCase switch
        {
            AttrProto.KindOneofCase.I => new IntAttr(a.I),
            AttrProto.KindOneofCase.F => new FloatAttr(a.F),
            AttrProto.KindOneofCase.S => new StringAttr(a.S),
            AttrProto.KindOneofCase.Dtype => new DTypeAttr(DTypeOf(a.Dtype)),
            AttrProto.KindOneofCase.Dims => new DimsAttr(a.Dims.Items.ToImmutableArray()),
            AttrProto.KindOneofCase.DimLists => new DimListsAttr(a.DimLists.Lists.Select(l => l.Items.ToImmutableArray()).ToImmutableArray()),
            _ => throw new IrFormatException("attribute with no value"),
        };
    }
}
