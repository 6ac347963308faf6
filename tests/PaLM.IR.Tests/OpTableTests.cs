using System.Collections.Immutable;

namespace PaLM.IR.Tests;

/// <summary>The op table's entries are complete, and every op's inference rule is exercised.</summary>
public class OpTableTests
{
    private static readonly Dictionary<string, Dim> Dims = new[]
    {
        new Dim("b", 2), new Dim("s", 4), new Dim("d", 8), new Dim("h", 2), new Dim("k", 4), new Dim("f", 16),
        new Dim("v", 10), new Dim("layers", 3), new Dim("kseq", 4), new Dim("bd", 16), new Dim("da", 3), new Dim("db", 5),
        new Dim("d/2", 4), new Dim("s/2", 2),
    }.ToDictionary(d => d.Name);

    /// <summary>Parses <c>f32[b, d]</c> against the test's dims.</summary>
    internal static TensorType T(string text)
    {
        var open = text.IndexOf('[');
        Assert.True(DTypes.TryParse(text[..open], out var dtype), text);
        var names = text[(open + 1)..^1].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return new TensorType(dtype, names.Select(n => Dims[n]).ToImmutableArray());
    }

    private static DimsAttr Ds(params string[] names) => new([.. names]);

    /// <summary>(op, operand types, attributes, expected result types). Defaults are filled in from the signature.</summary>
    public static readonly (string Op, string[] Inputs, (string, Attr)[] Attrs, string[] Results)[] Cases =
    [
        ("add", ["f32[b, d]", "f32[d]"], [], ["f32[b, d]"]),
        ("sub", ["f32[d]", "f32[b, d]"], [], ["f32[b, d]"]),
        ("mul", ["f32[b]", "f32[d]"], [], ["f32[b, d]"]),
        ("div", ["f32[b, d]", "f32[]"], [], ["f32[b, d]"]),
        ("maximum", ["i32[b, d]", "i32[d, b]"], [], ["i32[b, d]"]),
        ("neg", ["i32[b]"], [], ["i32[b]"]),
        ("exp", ["f32[b, d]"], [], ["f32[b, d]"]),
        ("log", ["bf16[d]"], [], ["bf16[d]"]),
        ("rsqrt", ["f32[b, d]"], [], ["f32[b, d]"]),
        ("sqrt", ["f32[b, d]"], [], ["f32[b, d]"]),
        ("tanh", ["f32[b, d]"], [], ["f32[b, d]"]),
        ("sigmoid", ["f32[b, d]"], [], ["f32[b, d]"]),
        ("silu", ["f32[s, f]"], [], ["f32[s, f]"]),
        ("square", ["i32[b]"], [], ["i32[b]"]),
        ("constant", [], [("value", new FloatAttr(2.5)), ("dtype", new DTypeAttr(DType.BF16))], ["bf16[]"]),
        ("cast", ["f32[b, d]"], [("to", new DTypeAttr(DType.BF16))], ["bf16[b, d]"]),
        ("einsum", ["f32[b, s, d]", "f32[d, f]"], [("operands", new DimListsAttr([["b", "s", "d"], ["d", "f"]])), ("output", Ds("b", "s", "f"))], ["f32[b, s, f]"]),
        ("sum", ["f32[b, s, d]"], [("over", Ds("s", "d"))], ["f32[b]"]),
        ("mean", ["f32[b, s, d]"], [("over", Ds("b"))], ["f32[s, d]"]),
        ("sum_squares", ["f32[b, s, d]"], [("over", Ds("s", "d"))], ["f32[b]"]),
        ("mean_squares", ["bf16[b, s, d]"], [("over", Ds("b", "d"))], ["bf16[s]"]),
        ("max", ["f32[b, s, d]"], [("over", Ds("d"))], ["f32[b, s]"]),
        ("softmax", ["f32[b, s, d]"], [("over", Ds("d"))], ["f32[b, s, d]"]),
        ("softmax_grad", ["f32[b, s, d]", "f32[b, s, d]"], [("over", Ds("d"))], ["f32[b, s, d]"]),
        ("logsumexp", ["f32[b, s, d]"], [("over", Ds("d"))], ["f32[b, s]"]),
        ("reshape", ["f32[b, d]"], [("to", Ds("bd"))], ["f32[bd]"]),
        ("transpose", ["f32[b, s, d]"], [("to", Ds("d", "b", "s"))], ["f32[d, b, s]"]),
        ("split", ["f32[b, d]"], [("along", Ds("d")), ("into", Ds("da", "db"))], ["f32[b, da]", "f32[b, db]"]),
        ("concat", ["f32[b, da]", "f32[b, db]"], [("along", Ds("da", "db")), ("as", Ds("d"))], ["f32[b, d]"]),
        ("layernorm", ["f32[b, s, d]", "f32[d]"], [("over", Ds("d"))], ["f32[b, s, d]"]),
        ("rope", ["f32[b, s, h, k]"], [("seq", Ds("s")), ("feature", Ds("k"))], ["f32[b, s, h, k]"]),
        ("causal_mask", ["f32[b, h, s, kseq]"], [("query", Ds("s")), ("key", Ds("kseq"))], ["f32[b, h, s, kseq]"]),
        ("causal_softmax", ["f32[b, h, s, kseq]"], [("query", Ds("s")), ("key", Ds("kseq"))], ["f32[b, h, s, kseq]"]),
        ("gather", ["f32[v, d]", "i32[b, s]"], [("along", Ds("v"))], ["f32[b, s, d]"]),
        ("cross_entropy", ["f32[b, s, v]", "i32[b, s]"], [("over", Ds("v"))], ["f32[b, s]"]),
        ("repeat", ["f32[b, d]", "f32[layers, d]", "f32[s]"], [("count", Ds("layers")), ("carried", new IntAttr(1)), ("stacked", new IntAttr(1))], ["f32[b, d]"]),
        // Collectives and local slicing exist in per-device graphs, whose split dims are named d/k.
        ("all_gather", ["f32[b, d/2]"], [("along", Ds("d/2")), ("to", Ds("d")), ("axes", Ds("model"))], ["f32[b, d]"]),
        ("reduce_scatter", ["f32[b, d]"], [("along", Ds("d")), ("to", Ds("d/2")), ("axes", Ds("model"))], ["f32[b, d/2]"]),
        ("shard_slice", ["f32[b, d]"], [("along", Ds("d")), ("to", Ds("d/2")), ("axes", Ds("data"))], ["f32[b, d/2]"]),
        ("all_reduce", ["f32[b, d]"], [("axes", Ds("pod", "data"))], ["f32[b, d]"]),
        ("all_to_all", ["f32[s/2, d]"], [("split", Ds("d")), ("split_to", Ds("d/2")), ("concat", Ds("s/2")), ("concat_to", Ds("s")), ("axes", Ds("model"))], ["f32[s, d/2]"]),
        // Renamed einsum labels (keys' s as kseq) and a three-operand contraction.
        ("einsum", ["f32[b, h, s, k]", "f32[b, s, k]"], [("operands", new DimListsAttr([["b", "h", "s", "k"], ["b", "kseq", "k"]])), ("output", Ds("b", "h", "s", "kseq"))], ["f32[b, h, s, kseq]"]),
        ("causal_einsum", ["f32[b, h, s, k]", "f32[b, s, k]"], [("operands", new DimListsAttr([["b", "h", "s", "k"], ["b", "kseq", "k"]])), ("output", Ds("b", "h", "s", "kseq")),
            ("query", Ds("s")), ("key", Ds("kseq")), ("blocks", new IntAttr(2))], ["f32[b, h, s, kseq]"]),
        ("causal_einsum_softmax", ["f32[b, s, h, k]", "f32[b, s, k]"], [("operands", new DimListsAttr([["b", "s", "h", "k"], ["b", "kseq", "k"]])),
            ("output", Ds("b", "h", "s", "kseq")), ("query", Ds("s")), ("key", Ds("kseq")), ("blocks", new IntAttr(2))], ["f32[b, h, s, kseq]"]),
        ("causal_einsum_softmax_grad", ["f32[b, s, h, k]", "f32[b, s, k]", "f32[b, h, s, kseq]"],
            [("operands", new DimListsAttr([["b", "s", "h", "k"], ["b", "kseq", "k"], ["b", "h", "s", "kseq"]])),
            ("output", Ds("b", "h", "s", "kseq")), ("query", Ds("s")), ("key", Ds("kseq")), ("blocks", new IntAttr(2))], ["f32[b, h, s, kseq]"]),
        ("einsum", ["f32[b, d]", "f32[d, f]", "f32[f]"], [("operands", new DimListsAttr([["b", "d"], ["d", "f"], ["f"]])), ("output", Ds("b"))], ["f32[b]"]),
        // Ops autodiff and the optimizer emit.
        ("minimum", ["f32[b, d]", "f32[]"], [], ["f32[b, d]"]),
        ("step", ["f64[b]"], [], ["f64[b]"]),
        ("broadcast", ["f32[d]"], [("to", Ds("b", "d", "s"))], ["f32[b, d, s]"]),
        ("sharding_constraint", ["f32[b, d]"], [], ["f32[b, d]"]),
        ("silu_grad", ["f32[s, f]", "f32[s, f]"], [], ["f32[s, f]"]),
        ("layernorm_dx", ["f32[b, s, d]", "f32[b, s, d]", "f32[d]"], [("over", Ds("d"))], ["f32[b, s, d]"]),
        ("layernorm_dscale", ["f32[b, s, d]", "f32[b, s, d]"], [("over", Ds("d"))], ["f32[d]"]),
        ("scatter_add", ["f32[b, s, d]", "i32[b, s]"], [("along", Ds("v")), ("to", Ds("v", "d"))], ["f32[v, d]"]),
        ("cross_entropy_grad", ["f32[b, s]", "f32[b, s, v]", "i32[b, s]"], [("over", Ds("v"))], ["f32[b, s, v]"]),
    ];

    public static TheoryData<int, string> CaseIndex()
    {
        var data = new TheoryData<int, string>();
        for (int i = 0; i < Cases.Length; i++) data.Add(i, Cases[i].Op);
        return data;
    }

    private static ImmutableSortedDictionary<string, Attr> AttrsWithDefaults(OpDef op, (string, Attr)[] given)
    {
        var attrs = GraphBuilder.Attrs(given);
        foreach (var spec in op.Signature.Attrs)
            if (spec.Default is { } d && !attrs.ContainsKey(spec.Name)) attrs = attrs.Add(spec.Name, d);
        return attrs;
    }

    [Theory]
    [MemberData(nameof(CaseIndex))]
    public void Infers_the_result_type(int index, string opName)
    {
        var c = Cases[index];
        var op = OpTable.Get(opName);
        var inputs = c.Inputs.Select(T).ToImmutableArray();
        var attrs = AttrsWithDefaults(op, c.Attrs);
        var types = op.Infer(new InferContext(op, inputs, attrs, Dims));
        Assert.Equal(c.Results.Select(T), types);

        // The same node through the builder, then its FLOP count and lowering.
        var b = new GraphBuilder(Dims);
        var ins = inputs.Select((t, i) => b.NewValue("in", t)).ToList();
        var block = new List<Node>();
        var outs = b.Apply(block, op, ins, attrs, ["out"]);
        Assert.Equal(types, outs.Select(o => o.Type));
        var node = Assert.Single(block);
        Assert.True(op.Flops(node) >= 0);
        var lowering = op.Lower(new LowerContext(node));
        Assert.NotNull(lowering);
        if (op.HasRegion) Assert.IsType<LoopLowering>(lowering);
        else Assert.IsType<RtCall>(lowering);
    }

    [Fact]
    public void Every_op_in_the_table_is_covered_by_an_inference_case()
    {
        var covered = Cases.Select(c => c.Op).ToHashSet();
        var all = OpTable.All.Select(o => o.Name).ToHashSet();
        Assert.Equal(all.Order(), covered.Order());
    }

    [Fact]
    public void Every_op_has_its_rules_and_a_unique_name()
    {
        var ops = OpTable.All.ToList();
        Assert.True(ops.Count >= 30, $"{ops.Count} ops");
        Assert.Equal(ops.Count, ops.Select(o => o.Name).Distinct(StringComparer.Ordinal).Count());
        Assert.Equal(ops.Select(o => o.Name).Order(StringComparer.Ordinal), ops.Select(o => o.Name)); // All is sorted
        foreach (var op in ops)
        {
            Assert.False(string.IsNullOrWhiteSpace(op.Name));
            Assert.False(string.IsNullOrWhiteSpace(op.Doc), $"{op.Name}: no doc");
            Assert.NotNull(op.Infer);
            Assert.NotNull(op.Flops);
            Assert.NotNull(op.Lower);
            Assert.NotNull(op.Signature);
            Assert.True(op.Signature.MinOperands <= op.Signature.MaxOperands, op.Name);
            Assert.Equal(op.Signature.Attrs.Length, op.Signature.Attrs.Select(a => a.Name).Distinct().Count());
            Assert.Same(op, OpTable.Get(op.Name));
            Assert.True(OpTable.TryGet(op.Name, out var again) && ReferenceEquals(op, again));
        }
        Assert.False(OpTable.TryGet("nope", out _));
        Assert.Throws<KeyNotFoundException>(() => OpTable.Get("nope"));
        Assert.Equal(["repeat"], ops.Where(o => o.HasRegion).Select(o => o.Name));
        Assert.Equal(["causal_einsum", "causal_einsum_softmax", "causal_einsum_softmax_grad", "einsum"], ops.Where(o => o.IsMatmul).Select(o => o.Name));
    }

    // ---- type errors from the rules ---------------------------------------------------------------------------------

    public static TheoryData<string, string[], string> TypeErrors() => new()
    {
        { "add", ["i32[b]", "f32[b]"], "add: operand dtypes differ" },
        { "exp", ["i32[b]"], "exp: operand 1 must be floating point" },
        { "reshape-mismatch", ["f32[b, s]"], "reshape: f32[b, s] has 8 elements but [bd] has 16" },
        { "concat-missing-dim", ["f32[b, d]", "f32[b, d]"], "concat: 'da' is not a dim of operand 1 f32[b, d]" },
        { "split-sum", ["f32[b, s]"], "split: pieces [da=3, db=5] sum to 8, not s=4" },
        { "transpose-not-permutation", ["f32[b, d]"], "transpose: [d, d] is not a permutation" },
        { "layernorm-scale", ["f32[b, d]", "f32[b]"], "layernorm: scale must be [d], got f32[b]" },
        { "rope-odd", ["f32[s, da]"], "rope: feature dim 'da' must have even size, got 3" },
        { "gather-float-ids", ["f32[v, d]", "f32[b]"], "gather: indices must be i32" },
        { "cross-entropy-targets", ["f32[b, v]", "i32[s]"], "cross_entropy: targets i32[s] must have the dims of logits f32[b, v] without 'v'" },
        { "repeat-stacked", ["f32[b, d]", "f32[d]"], "repeat: stacked operand 2 f32[d] must have 'layers' as its first dim" },
        { "einsum-repeated-label", ["f32[b, d]"], "einsum: subscript 'b' repeated in operand 1" },
        { "causal-einsum-labels", ["f32[b, s]", "f32[b, s]"], "causal_einsum: query and key must be two different subscripts of its operands" },
        { "causal-einsum-contracted", ["f32[b, s]", "f32[b, d]"], "causal_einsum: the output must keep the query or the key" },
        { "causal-softmax-einsum-key-summed", ["f32[b, s]", "f32[b, d]"], "causal_einsum_softmax: the output must keep both the query and the key" },
    };

    private static readonly Dictionary<string, (string Op, (string, Attr)[] Attrs)> ErrorAttrs = new()
    {
        ["add"] = ("add", []),
        ["exp"] = ("exp", []),
        ["reshape-mismatch"] = ("reshape", [("to", Ds("bd"))]),
        ["concat-missing-dim"] = ("concat", [("along", Ds("da", "db")), ("as", Ds("d"))]),
        ["split-sum"] = ("split", [("along", Ds("s")), ("into", Ds("da", "db"))]),
        ["transpose-not-permutation"] = ("transpose", [("to", Ds("d", "d"))]),
        ["layernorm-scale"] = ("layernorm", [("over", Ds("d"))]),
        ["rope-odd"] = ("rope", [("seq", Ds("s")), ("feature", Ds("da"))]),
        ["gather-float-ids"] = ("gather", [("along", Ds("v"))]),
        ["cross-entropy-targets"] = ("cross_entropy", [("over", Ds("v"))]),
        ["repeat-stacked"] = ("repeat", [("count", Ds("layers")), ("carried", new IntAttr(1)), ("stacked", new IntAttr(1))]),
        ["einsum-repeated-label"] = ("einsum", [("operands", new DimListsAttr([["b", "b"]])), ("output", Ds("b"))]),
        ["causal-einsum-labels"] = ("causal_einsum", [("operands", new DimListsAttr([["b", "s"], ["b", "s"]])), ("output", Ds("b")),
            ("query", Ds("s")), ("key", Ds("d")), ("blocks", new IntAttr(2))]),
        ["causal-einsum-contracted"] = ("causal_einsum", [("operands", new DimListsAttr([["b", "s"], ["b", "d"]])), ("output", Ds("b")),
            ("query", Ds("s")), ("key", Ds("d")), ("blocks", new IntAttr(2))]),
        ["causal-softmax-einsum-key-summed"] = ("causal_einsum_softmax", [("operands", new DimListsAttr([["b", "s"], ["b", "d"]])), ("output", Ds("b", "s")),
            ("query", Ds("s")), ("key", Ds("d")), ("blocks", new IntAttr(2))]),
    };

    [Theory]
    [MemberData(nameof(TypeErrors))]
    public void Rules_reject_ill_typed_operands(string id, string[] inputs, string message)
    {
        var (opName, given) = ErrorAttrs[id];
        var op = OpTable.Get(opName);
        var e = Assert.Throws<TypeErrorException>(() =>
            op.Infer(new InferContext(op, inputs.Select(T).ToImmutableArray(), AttrsWithDefaults(op, given), Dims)));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Reshape_of_a_tensor_beyond_2_63_elements_is_a_type_error()
    {
        var huge = new Dictionary<string, Dim> { ["p"] = new("p", 1L << 32), ["q"] = new("q", 1L << 32), ["r"] = new("r", 4) };
        var op = OpTable.Get("reshape");
        var input = new TensorType(DType.F32, huge["p"], huge["q"]);
        var e = Assert.Throws<TypeErrorException>(() =>
            op.Infer(new InferContext(op, [input], GraphBuilder.Attrs(("to", Ds("r"))), huge)));
        Assert.Contains("2^63", e.Message);
    }

    [Fact]
    public void Einsum_lowers_to_letters_in_order_of_first_appearance()
    {
        var b = new GraphBuilder(Dims);
        var q = b.NewValue("q", T("f32[b, h, s, k]"));
        var kk = b.NewValue("k", T("f32[b, s, k]"));
        var block = new List<Node>();
        b.Apply(block, OpTable.Get("einsum"), [q, kk],
            GraphBuilder.Attrs(("operands", new DimListsAttr([["b", "h", "s", "k"], ["b", "kseq", "k"]])), ("output", Ds("b", "h", "s", "kseq"))), ["scores"]);
        Assert.Equal("abcd,aed->abce", ContractionOps.LetterSpec(block[0]));
    }
}
