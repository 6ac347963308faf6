using PaLM.Dsl;

namespace PaLM.IR.Tests;

public class SerializationTests
{
    public static TheoryData<string> GraphFiles()
    {
        var data = new TheoryData<string>();
        foreach (var f in TestPaths.TopLevelGraphs) data.Add(Path.GetFileName(f));
        return data;
    }

    private static readonly Lazy<Graph> s_tiny = new(() => Frontend.CompileFile(TestPaths.Graph("palm-tiny")));

    [Theory]
    [MemberData(nameof(GraphFiles))]
    public void Protobuf_round_trip_is_lossless(string file)
    {
        var g = Frontend.CompileFile(Path.Combine(TestPaths.Graphs, file));
        var text = Printer.Print(g);
        var bytes = Serialization.ToBytes(g);
        var back = Serialization.FromBytes(bytes);
        Assert.Equal(text, Printer.Print(back));
        Assert.Equal(bytes, Serialization.ToBytes(back)); // and stable: writing it again gives the same bytes
        Assert.Equal(g.Args.Select(a => (a.Kind, a.Init)), back.Args.Select(a => (a.Kind, a.Init)));
        Assert.Equal(g.Dims.ToArray(), back.Dims.ToArray());
    }

    [Theory]
    [MemberData(nameof(GraphFiles))]
    public void Json_round_trip_is_lossless(string file)
    {
        var g = Frontend.CompileFile(Path.Combine(TestPaths.Graphs, file));
        var json = Serialization.ToJson(g);
        var back = Serialization.FromJson(json);
        Assert.Equal(Printer.Print(g), Printer.Print(back));
        Assert.Equal(json, Serialization.ToJson(back));
    }

    [Fact]
    public void Round_trip_keeps_locations_ids_and_shardings_that_the_text_does_not_show_in_full()
    {
        var g = s_tiny.Value;
        var back = Serialization.FromBytes(Serialization.ToBytes(g));
        Assert.Equal(g.Args.Select(a => (a.Value.Id, a.Value.Loc, a.Value.Sharding)), back.Args.Select(a => (a.Value.Id, a.Value.Loc, a.Value.Sharding)));
        Assert.EndsWith("arch/palm.palm", back.Args[0].Value.Loc!.File); // the full path, though the text prints the file name
        Assert.Equal(g.Mesh!.ToString(), back.Mesh!.ToString());
    }

    [Fact]
    public void A_graph_without_mesh_or_locations_round_trips()
    {
        var b = new Dim("b", 2);
        var x = new Value(0, "x", new TensorType(DType.I32, b));
        var y = new Value(1, "y", new TensorType(DType.I32, b));
        var g = new Graph("bare", [b], null, [new GraphArg(x, ArgKind.Input, null)],
            new Block([x], [new Node(OpTable.Get("neg"), [x], [y])], [y]), ["y"]);
        var back = Serialization.FromBytes(Serialization.ToBytes(g));
        Assert.Null(back.Mesh);
        Assert.Null(back.Body.Nodes[0].Loc);
        Assert.Equal(Printer.Print(g), Printer.Print(back));
        Assert.Equal(Printer.Print(g), Printer.Print(Serialization.FromJson(Serialization.ToJson(g))));
    }

    // ---- garbage in, IrFormatException out ------------------------------------------------------------------------

    public static TheoryData<string, byte[]> GarbageBytes()
    {
        var rng = new Random(7);
        var data = new TheoryData<string, byte[]>
        {
            { "empty", Array.Empty<byte>() },
            { "one zero byte", new byte[] { 0 } },
            { "text", System.Text.Encoding.UTF8.GetBytes("graph palm-tiny\ndims b=2\n") },
            { "all 0xff", Enumerable.Repeat((byte)0xff, 64).ToArray() },
            { "a huge length prefix", new byte[] { 0x32, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3 } },
            { "version 2", new byte[] { 0x08, 0x02 } },
            { "version 1 and nothing else", new byte[] { 0x08, 0x01 } },
        };
        foreach (var n in new[] { 1, 3, 16, 100, 1000, 10000 })
        {
            var bytes = new byte[n];
            rng.NextBytes(bytes);
            data.Add($"{n} random bytes", bytes);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(GarbageBytes))]
    public void Garbage_bytes_raise_IrFormatException(string what, byte[] bytes)
    {
        var e = Record.Exception(() => Serialization.FromBytes(bytes));
        Assert.True(e is IrFormatException, $"{what}: {e?.GetType().Name ?? "no exception"}: {e?.Message}");
    }

    [Theory]
    [InlineData("")]
    [InlineData("not json")]
    [InlineData("{")]
    [InlineData("[]")]
    [InlineData("{\"version\": 1}")]
    [InlineData("{\"version\": 1, \"body\": {\"nodes\": [{\"op\": \"nope\"}]}}")]
    [InlineData("{\"version\": \"one\"}")]
    [InlineData("{\"unknownField\": 3}")]
    public void Garbage_json_raises_IrFormatException(string json)
    {
        var e = Record.Exception(() => Serialization.FromJson(json));
        Assert.True(e is IrFormatException, $"{e?.GetType().Name ?? "no exception"}: {e?.Message}");
    }

    /// <summary>
    /// Damaged real files: every truncation (at a stride) and seeded single-byte changes of palm-tiny's bytes either
    /// read back as a graph that verifies and prints, or raise <see cref="IrFormatException"/>; never anything else.
    /// </summary>
    [Fact]
    public void Damaged_graphs_raise_only_IrFormatException()
    {
        var good = Serialization.ToBytes(s_tiny.Value);
        var variants = new List<(string What, byte[] Bytes)>();
        for (int n = 0; n < good.Length; n += 7) variants.Add(($"first {n} bytes", good[..n]));
        var rng = new Random(42);
        for (int k = 0; k < 1500; k++)
        {
            var b = (byte[])good.Clone();
            var pos = rng.Next(b.Length);
            b[pos] = k % 3 == 0 ? (byte)(b[pos] ^ (1 << rng.Next(8))) : (byte)rng.Next(256);
            variants.Add(($"byte {pos} set to 0x{b[pos]:x2}", b));
        }
        int rejected = 0;
        var escaped = new Dictionary<string, string>(); // one example per exception type and throwing frame
        foreach (var (what, bytes) in variants)
        {
            try
            {
                var g = Serialization.FromBytes(bytes);
                Verifier.Verify(g);
                _ = Printer.Print(g);
            }
            catch (IrFormatException) { rejected++; }
            catch (Exception e)
            {
                var frame = e.StackTrace?.Split('\n').FirstOrDefault()?.Trim() ?? "";
                escaped.TryAdd($"{e.GetType().Name} {frame}", $"{what}: {e}");
            }
        }
        Assert.True(escaped.Count == 0, $"{escaped.Count} kinds of exception escaped:\n\n{string.Join("\n\n", escaped.Values)}");
        Assert.True(rejected > variants.Count / 4, $"only {rejected} of {variants.Count} damaged files were rejected");
    }

    /// <summary>Targeted damage to the protobuf form, each of which once escaped as another exception.</summary>
    public static TheoryData<string> ProtoDamage() => new(s_damage.Keys);

    private static readonly Dictionary<string, Action<Proto.GraphProto>> s_damage = new()
    {
        ["an argument without a value"] = p => p.Args[0].Value = null,
        ["a value without a type"] = p => p.Args[0].Value.Type = null,
        ["an unknown dtype"] = p => p.Args[0].Value.Type.Dtype = (Proto.DTypeProto)7,
        ["an unknown dtype in a node result"] = p => p.Body.Nodes[0].Outputs[0].Type.Dtype = (Proto.DTypeProto)(-1),
        ["an unknown dtype attribute"] = p => p.Body.Nodes.First(n => n.Attrs.ContainsKey("dtype")).Attrs["dtype"].Dtype = (Proto.DTypeProto)9,
        ["a dim declared twice"] = p => p.Dims.Add(new Proto.DimProto { Name = "seq", Size = 16 }),
        ["a dim declared twice with another size"] = p => p.Dims.Add(new Proto.DimProto { Name = "seq", Size = 3 }),
        ["an undeclared dim"] = p => p.Args[0].Value.Type.Dims.Add("nope"),
        ["a negative dim size"] = p => p.Dims[0].Size = -2,
        ["a repeat count naming no dim"] = p => Repeat(p).Attrs["count"].Dims.Items.Clear(),
        ["a repeat count naming two dims"] = p => Repeat(p).Attrs["count"].Dims.Items.Add("seq"),
        ["a repeat without its region"] = p => Repeat(p).Regions.Clear(),
        ["a repeat with a huge carried count"] = p => Repeat(p).Attrs["carried"].I = 1L << 40,
        ["an attribute without a value"] = p => Repeat(p).Attrs["carried"] = new Proto.AttrProto(),
        ["an attribute of the wrong kind"] = p => Repeat(p).Attrs["count"] = new Proto.AttrProto { I = 2 },
        ["an unknown op"] = p => p.Body.Nodes[0].Op = "nope",
        ["a use of an unknown value id"] = p => p.Body.Nodes[0].Inputs[0] = 12345,
        ["a value id defined twice"] = p => p.Body.Nodes[1].Outputs[0].Id = p.Body.Nodes[0].Outputs[0].Id,
        ["a result that is not a value"] = p => p.Body.Results[0] = 999,
        ["no body"] = p => p.Body = null,
        ["a sharding naming a missing axis"] = p => p.Args[0].Value.Sharding.Dims[0].Items.Add("nope"),
        ["a sharding of the wrong rank"] = p => p.Args[0].Value.Sharding.Dims.Clear(),
        ["a mesh removed under shardings"] = p => p.Mesh = null,
        ["an output name too many"] = p => p.OutputNames.Add("extra"),
        ["an argument that is not the body's"] = p => p.Args.RemoveAt(p.Args.Count - 1),
        ["another format version"] = p => p.Version = 2,
    };

    private static Proto.NodeProto Repeat(Proto.GraphProto p) => p.Body.Nodes.First(n => n.Op == "repeat");

    [Theory]
    [MemberData(nameof(ProtoDamage))]
    public void Damaged_protos_raise_IrFormatException(string damage)
    {
        var p = Serialization.ToProto(s_tiny.Value);
        s_damage[damage](p);
        var bytes = Google.Protobuf.MessageExtensions.ToByteArray(p);
        var e = Record.Exception(() => Serialization.FromBytes(bytes));
        Assert.True(e is IrFormatException, $"{damage}: {e?.ToString() ?? "no exception"}");
    }

    [Fact]
    public void A_verifier_failure_on_read_is_an_IrFormatException_with_the_node()
    {
        // A node whose recorded result type disagrees with its op: the reader verifies and says where.
        var b = new Dim("b", 2);
        var d = new Dim("d", 4);
        var x = new Value(0, "x", new TensorType(DType.F32, b, d));
        var y = new Value(1, "y", new TensorType(DType.F32, d, b));
        var g = new Graph("bad", [b, d], null, [new GraphArg(x, ArgKind.Input, null)],
            new Block([x], [new Node(OpTable.Get("neg"), [x], [y])], [y]), ["y"]);
        var e = Assert.Throws<IrFormatException>(() => Serialization.FromBytes(Serialization.ToBytes(g)));
        Assert.Contains(">>> %y = neg(%x)", e.Message);
    }
}
