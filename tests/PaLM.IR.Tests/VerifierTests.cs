using System.Collections.Immutable;

namespace PaLM.IR.Tests;

/// <summary>The verifier rejects hand-built malformed graphs and points at the offending node.</summary>
public class VerifierTests
{
    private static readonly Dim B = new("b", 2), D = new("d", 4), Layers = new("layers", 3);
    private static readonly ImmutableArray<Dim> Dims = [B, D, Layers];
    private static readonly Mesh TwoAxes = new([new MeshAxis("data", 2), new MeshAxis("model", 2)]);

    private static TensorType F32(params Dim[] dims) => new(DType.F32, dims);

    private static Node N(string op, Value[] inputs, Value[] outputs, ImmutableSortedDictionary<string, Attr>? attrs = null,
        ImmutableArray<Block> regions = default) =>
        new(OpTable.Get(op), [.. inputs], [.. outputs], attrs, regions);

    /// <summary>A graph with input x: f32[b, d] (id 0), the given nodes, and the given results.</summary>
    private static Graph G(Value x, Node[] nodes, Value[] results, Mesh? mesh = null, ImmutableArray<Dim>? dims = null) =>
        new("t", dims ?? Dims, mesh, [new GraphArg(x, ArgKind.Input, null)], new Block([x], [.. nodes], [.. results]),
            [.. results.Select(r => r.Name)]);

    private static Value X => new(0, "x", F32(B, D));

    private static string Rejects(Graph g, params string[] fragments)
    {
        var e = Assert.Throws<VerifyException>(() => Verifier.Verify(g));
        foreach (var f in fragments) Assert.Contains(f, e.Message);
        return e.Message;
    }

    [Fact]
    public void A_well_formed_graph_verifies()
    {
        var x = X;
        var y = new Value(1, "y", F32(B, D));
        var s = new Value(2, "s", F32(B), new Sharding([["data"]]));
        Verifier.Verify(G(x, [N("neg", [x], [y]), N("sum", [y], [s], GraphBuilder.Attrs(("over", new DimsAttr(["d"]))))], [s], TwoAxes));
    }

    [Fact]
    public void Use_of_an_undefined_value()
    {
        var x = X;
        var ghost = new Value(7, "ghost", F32(B, D));
        var y = new Value(1, "y", F32(B, D));
        Rejects(G(x, [N("neg", [ghost], [y])], [y]), "operand %ghost is not defined before its use", ">>> %y = neg(%ghost)");
    }

    [Fact]
    public void Use_before_definition()
    {
        var x = X;
        var y = new Value(1, "y", F32(B, D));
        var z = new Value(2, "z", F32(B, D));
        Rejects(G(x, [N("exp", [y], [z]), N("neg", [x], [y])], [z]), "operand %y is not defined", ">>> %z = exp(%y)", "    %y = neg(%x)");
    }

    [Fact]
    public void A_value_defined_twice()
    {
        var x = X;
        var y = new Value(1, "y", F32(B, D));
        Rejects(G(x, [N("neg", [x], [y]), N("exp", [x], [y])], [y]), "value name %y is defined twice", ">>> %y = exp(%x)");
    }

    [Fact]
    public void Two_values_with_one_name()
    {
        var x = X;
        var y1 = new Value(1, "y", F32(B, D));
        var y2 = new Value(2, "y", F32(B, D));
        Rejects(G(x, [N("neg", [x], [y1]), N("exp", [y1], [y2])], [y2]), "defined twice", ">>> %y = exp(%y)");
    }

    [Fact]
    public void An_output_type_that_differs_from_what_the_op_infers()
    {
        var x = X;
        var y = new Value(1, "y", F32(D, B));
        Rejects(G(x, [N("neg", [x], [y])], [y]), "result %y has type f32[d, b] but neg infers f32[b, d]", ">>> %y = neg(%x) : f32[d, b]");
    }

    [Fact]
    public void An_output_dtype_that_differs_from_what_the_op_infers()
    {
        var x = X;
        var y = new Value(1, "y", new TensorType(DType.BF16, B, D));
        Rejects(G(x, [N("neg", [x], [y])], [y]), "has type bf16[b, d] but neg infers f32[b, d]", ">>> ");
    }

    [Fact]
    public void A_dim_used_with_a_size_differing_from_its_declaration()
    {
        // The result's d has size 5 where d is declared 4: the text of both types is f32[b, d], so the message shows sizes.
        var x = X;
        var y = new Value(1, "y", F32(B, new Dim("d", 5)));
        Rejects(G(x, [N("neg", [x], [y])], [y]), "d=5", "d=4", ">>> %y = neg(%x)");
    }

    [Fact]
    public void An_argument_with_a_dim_size_differing_from_its_declaration()
    {
        var x = new Value(0, "x", F32(B, new Dim("d", 5)));
        Rejects(G(x, [], [x]), "%x uses dim d=5, which is not declared with that size");
    }

    [Fact]
    public void An_undeclared_dim()
    {
        var x = new Value(0, "x", F32(B, new Dim("e", 4)));
        Rejects(G(x, [], [x]), "%x uses dim e=4");
    }

    [Fact]
    public void A_sharding_naming_a_missing_mesh_axis()
    {
        var x = X;
        var y = new Value(1, "y", F32(B, D), new Sharding([[], ["pod"]]));
        Rejects(G(x, [N("neg", [x], [y])], [y], TwoAxes), "%y: sharding uses mesh axis 'pod', which the mesh does not have", ">>> %y = neg(%x) : f32[b, d] shard{d:pod}");
    }

    [Fact]
    public void A_sharding_without_a_mesh()
    {
        var x = X;
        var y = new Value(1, "y", F32(B, D), new Sharding([["data"], []]));
        Rejects(G(x, [N("neg", [x], [y])], [y]), "mesh axis 'data'", ">>> %y = neg(%x)");
    }

    [Fact]
    public void A_mesh_axis_used_twice_in_one_sharding()
    {
        var x = X;
        var y = new Value(1, "y", F32(B, D), new Sharding([["data"], ["data"]]));
        Rejects(G(x, [N("neg", [x], [y])], [y], TwoAxes), "mesh axis 'data' is used twice", ">>> ");
    }

    [Fact]
    public void A_sharding_of_the_wrong_rank()
    {
        var x = X;
        var y = new Value(1, "y", F32(B, D), new Sharding([["data"]]));
        Rejects(G(x, [N("neg", [x], [y])], [y], TwoAxes), "sharding has 1 dims, type has 2", ">>> ");
    }

    [Fact]
    public void Wrong_operand_count()
    {
        var x = X;
        var y = new Value(1, "y", F32(B, D));
        Rejects(G(x, [N("neg", [x, x], [y])], [y]), "neg takes 1 operands, has 2", ">>> %y = neg(%x, %x)");
        Rejects(G(x, [N("add", [x], [y])], [y]), "add takes 2 operands, has 1", ">>> %y = add(%x)");
    }

    [Fact]
    public void Wrong_result_count()
    {
        var x = X;
        var y = new Value(1, "y", F32(B, D));
        var z = new Value(2, "z", F32(B, D));
        Rejects(G(x, [N("neg", [x], [y, z])], [y]), "neg produces 1 results, the node has 2", ">>> %y, %z = neg(%x)");
    }

    [Fact]
    public void A_missing_required_attribute()
    {
        var x = X;
        var y = new Value(1, "y", F32(B));
        Rejects(G(x, [N("sum", [x], [y])], [y]), "sum is missing attribute 'over'", ">>> %y = sum(%x)");
    }

    [Fact]
    public void An_op_rule_failure_is_reported_with_the_node()
    {
        var x = X;
        var y = new Value(1, "y", F32(B));
        Rejects(G(x, [N("sum", [x], [y], GraphBuilder.Attrs(("over", new DimsAttr(["layers"]))))], [y]),
            "sum: dim 'layers' is not a dim of f32[b, d]", ">>> %y = sum(%x) {over=[layers]}");
    }

    [Fact]
    public void The_marked_node_is_shown_between_its_neighbours()
    {
        var x = X;
        var a = new Value(1, "a", F32(B, D));
        var bad = new Value(2, "bad", F32(D, B));
        var c = new Value(3, "c", F32(B, D));
        var msg = Rejects(G(x, [N("neg", [x], [a]), N("exp", [a], [bad]), N("tanh", [a], [c])], [c]));
        var lines = msg.Split('\n');
        Assert.StartsWith("verifier: ", lines[0]);
        Assert.Equal(["    %a = neg(%x) : f32[b, d]", ">>> %bad = exp(%a) : f32[d, b]", "    %c = tanh(%a) : f32[b, d]"], lines[1..]);
    }

    // ---- repeat ----------------------------------------------------------------------------------------------------

    /// <summary>h = repeat over layers with carried h: f32[b, d] and a stacked w: f32[layers, d]; the body is given.</summary>
    private static Graph RepeatGraph(Func<Value, Value, Block> body, TensorType? resultType = null)
    {
        var x = X;
        var w = new Value(1, "w", F32(Layers, D));
        var h = new Value(2, "h", resultType ?? F32(B, D));
        var attrs = GraphBuilder.Attrs(("count", new DimsAttr(["layers"])), ("carried", new IntAttr(1)), ("stacked", new IntAttr(1)));
        var hIn = new Value(3, "h.in", F32(B, D));
        var wIn = new Value(4, "w.in", F32(D));
        var rep = N("repeat", [x, w], [h], attrs, [body(hIn, wIn)]);
        return new Graph("t", Dims, null,
            [new GraphArg(x, ArgKind.Input, null), new GraphArg(w, ArgKind.Parameter, new Init(InitKind.Normal, 0.02))],
            new Block([x, w], [rep], [h]), ["h"]);
    }

    [Fact]
    public void A_well_formed_repeat_verifies()
    {
        Verifier.Verify(RepeatGraph((h, w) =>
        {
            var o = new Value(5, "o", F32(B, D));
            return new Block([h, w], [N("mul", [h, w], [o])], [o]);
        }));
    }

    [Fact]
    public void A_repeat_whose_body_yields_the_wrong_type()
    {
        Rejects(RepeatGraph((h, w) =>
        {
            var s = new Value(5, "s", F32(B));
            return new Block([h, w], [N("sum", [h], [s], GraphBuilder.Attrs(("over", new DimsAttr(["d"]))))], [s]);
        }), "repeat body yields %s: f32[b] for carried result f32[b, d]", ">>> %h = repeat(%x, %w)");
    }

    [Fact]
    public void A_repeat_body_argument_of_the_wrong_type()
    {
        Rejects(RepeatGraph((h, _) =>
        {
            var wrong = new Value(4, "w.in", F32(Layers, D)); // the whole stack instead of one slice
            return new Block([h, wrong], [], [h]);
        }), "repeat body argument %w.in is f32[layers, d], operand implies f32[d]", ">>> %h = repeat(%x, %w)");
    }

    [Fact]
    public void A_repeat_body_that_uses_an_outer_value()
    {
        // Regions are isolated: the body sees its arguments only.
        var x = X;
        var w = new Value(1, "w", F32(Layers, D));
        var h = new Value(2, "h", F32(B, D));
        var hIn = new Value(3, "h.in", F32(B, D));
        var wIn = new Value(4, "w.in", F32(D));
        var o = new Value(5, "o", F32(B, D));
        var attrs = GraphBuilder.Attrs(("count", new DimsAttr(["layers"])), ("carried", new IntAttr(1)), ("stacked", new IntAttr(1)));
        var rep = N("repeat", [x, w], [h], attrs, [new Block([hIn, wIn], [N("add", [hIn, x], [o])], [o])]);
        var g = new Graph("t", Dims, null,
            [new GraphArg(x, ArgKind.Input, null), new GraphArg(w, ArgKind.Parameter, new Init(InitKind.Normal, 0.02))],
            new Block([x, w], [rep], [h]), ["h"]);
        Rejects(g, "operand %x is not defined", ">>> %o = add(%h.in, %x)");
    }

    [Fact]
    public void A_repeat_with_a_malformed_count_is_a_verify_error()
    {
        foreach (var count in new[] { ImmutableArray<string>.Empty, ["layers", "b"] })
        {
            var x = X;
            var h = new Value(1, "h", F32(B, D));
            var hIn = new Value(2, "h.in", F32(B, D));
            var attrs = GraphBuilder.Attrs(("count", new DimsAttr(count)), ("carried", new IntAttr(1)), ("stacked", new IntAttr(0)));
            Rejects(G(x, [N("repeat", [x], [h], attrs, [new Block([hIn], [], [hIn])])], [h]), "count", ">>> %h = repeat(%x)");
        }
    }

    [Fact]
    public void A_parameter_without_an_initializer()
    {
        var x = X;
        var g = new Graph("t", Dims, null, [new GraphArg(x, ArgKind.Parameter, null)], new Block([x], [], [x]), ["x"]);
        Rejects(g, "parameter %x has no initializer");
    }

    [Fact]
    public void A_region_on_an_op_without_one()
    {
        var x = X;
        var y = new Value(1, "y", F32(B, D));
        Rejects(G(x, [N("neg", [x], [y], regions: [new Block([], [], [])])], [y]), "neg takes no regions", ">>> ");
    }
}
