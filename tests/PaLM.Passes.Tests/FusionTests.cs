using PaLM.Dsl;
using PaLM.IR;

namespace PaLM.Passes.Tests;

/// <summary>
/// The fusion pass on palm-tiny's partitioned training step: per layer the forward's seven projection matmuls (q, k, v,
/// gate, up, attention out, MLP down) become two, the attention core's two einsums stay, and the forward's model-axis
/// collectives drop accordingly (the two branch outputs share one reduction). On meshes where the partitioner keeps
/// w_k and w_v split over model (data=1: their d_model:(data,model) annotation puts d_model on model alone), their
/// projections contract a split d_model and fuse as a second group; the paper's 2D layouts are tested here.
/// </summary>
public sealed class FusionTests
{
    private static Node ForwardLoop(Graph local) => local.Body.Nodes.First(n => n.Op.HasRegion && !ControlOps.IsReverse(n));

    private static Node BackwardLoop(Graph local) => local.Body.Nodes.First(n => n.Op.HasRegion && ControlOps.IsReverse(n));

    private static int Projections(Node loop) => loop.Regions[0].Nodes.Count(RematPolicy.IsDotWithoutBatchDims);

    private static int Einsums(Node loop) => loop.Regions[0].Nodes.Count(n => n.Op.IsMatmul);   // einsum and causal_einsum

    private static int ModelCollectives(Node loop) => loop.Regions[0].Nodes.Count(n =>
        n.Op.Sharding(n) == ShardingRule.Collective && n.Op.Name != "shard_slice" && n.Attr<DimsAttr>("axes").Names.Contains("model"));

    [Theory]
    [InlineData("data=1,model=1")]
    [InlineData("data=2,model=2")]
    [InlineData("data=4,model=2")]
    [InlineData("data=2,model=1")]
    public void SevenProjectionsBecomeTwo(string mesh)
    {
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var plain = TrainingCompiler.Compile(g, Mesh.Parse(mesh), new TrainingConfig { Fuse = false });
        var fused = TrainingCompiler.Compile(g, Mesh.Parse(mesh), new TrainingConfig { Fuse = true });
        Assert.Equal(7, Projections(ForwardLoop(plain.Local)));
        Assert.Equal(9, Einsums(ForwardLoop(plain.Local)));
        Assert.Equal(2, Projections(ForwardLoop(fused.Local)));
        Assert.Equal(4, Einsums(ForwardLoop(fused.Local)));
        Assert.True(Einsums(BackwardLoop(fused.Local)) < Einsums(BackwardLoop(plain.Local)),
            $"backward einsums {Einsums(BackwardLoop(plain.Local))} -> {Einsums(BackwardLoop(fused.Local))}");
        Assert.Equal(1, fused.Fusion!.Reassociated);
        if (mesh.Contains("model=1")) return;
        var before = ModelCollectives(ForwardLoop(plain.Local));
        var after = ModelCollectives(ForwardLoop(fused.Local));
        Assert.Equal(before - 1, after);
    }

    [Theory]
    [InlineData("data=1,model=1")]
    [InlineData("data=2,model=2")]
    public void ASumOfFiveEinsumsJoinsItsOperandsOnce(string mesh)
    {
        // The backward's input gradient of h sums five terms (q, k, v, gate, up). Fused pairwise, the growing operands
        // would be joined four times; after flattening, no concatenation reads another one's (renamed) result, and one
        // joins all five activation gradients.
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var fused = TrainingCompiler.Compile(g, Mesh.Parse(mesh), new TrainingConfig { Fuse = true });
        var body = BackwardLoop(fused.Local).Regions[0].Nodes;
        var producer = body.SelectMany(n => n.Outputs.Select(o => (o, n))).ToDictionary(p => p.o, p => p.n);
        Node? Producer(Value v) => producer.GetValueOrDefault(v);
        foreach (var cat in body.Where(n => n.Op.Name == "concat"))
            foreach (var v in cat.Inputs)
            {
                var p = Producer(v);
                if (p?.Op.Name == "reshape") p = Producer(p.Inputs[0]);
                Assert.False(p?.Op.Name == "concat", $"{cat.Outputs[0].Name} reads the concatenation {p?.Outputs[0].Name}");
            }
        // On one device all five terms share a layout; on 2×2, k and v's gradients are reduced apart and join later.
        if (mesh == "data=1,model=1")
            Assert.Contains(body, n => n.Op.Name == "concat" && n.Inputs.Length == 5 && n.Inputs[0].Type.Has("batch"));
    }

    [Theory]
    [InlineData("data=1,model=1")]
    [InlineData("data=2,model=2")]
    public void TheSameDataIsJoinedOnce(string mesh)
    {
        // The backward's weight gradients (h^T · [dq, dk, dv, dgate, dup]) and h's input gradient ([dq, ...] · W^T)
        // join the same activation gradients, each group through reshapes of its own; the second join must be a view
        // of the first, not a second copy of up to 56 MB.
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var fused = TrainingCompiler.Compile(g, Mesh.Parse(mesh), new TrainingConfig { Fuse = true });
        var body = BackwardLoop(fused.Local).Regions[0].Nodes;
        var producer = body.SelectMany(n => n.Outputs.Select(o => (o, n))).ToDictionary(p => p.o, p => p.n);
        Value Source(Value v) => producer.TryGetValue(v, out var p) && p.Op.Name == "reshape" ? p.Inputs[0] : v;
        var joins = body.Where(n => n.Op.Name == "concat")
            .Select(n => (n, Key: string.Join(",", n.Inputs.Select(v => Source(v).Name)) + "@" + n.Inputs[0].Type.IndexOf(n.Attr<DimsAttr>("along").Names[0])))
            .ToList();
        foreach (var dup in joins.GroupBy(j => j.Key).Where(gr => gr.Count() > 1))
            Assert.Fail($"{string.Join(" and ", dup.Select(j => j.n.Outputs[0].Name))} join the same data ({dup.Key})");
        // ...and is one: the second join became a view of the first (all five gradients on one device; on 2x2, k and v's
        // are reduced apart and join later, so fewer).
        Assert.Contains(body, n => n.Op.Name == "reshape" && producer.TryGetValue(n.Inputs[0], out var p) && p.Op.Name == "concat"
            && p.Inputs.Length == (mesh == "data=1,model=1" ? 5 : p.Inputs.Length) && p.Inputs.Length >= 2);
    }
    [Theory]
    [InlineData("data=1,model=1")]
    [InlineData("data=2,model=2")]
    public void WeightGradientsComeOutInTheWeightsLayout(string mesh)
    {
        // The output projections' weight gradients (w_o [heads, head_dim, d_model], w_down [d_ff, d_model]) share the
        // cotangent of the residual: their fused product puts the joined dim first, as the weights have it, so no
        // transpose follows the split and the per-layer gradient stack copies contiguous blocks.
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var fused = TrainingCompiler.Compile(g, Mesh.Parse(mesh), new TrainingConfig { Fuse = true });
        var body = BackwardLoop(fused.Local).Regions[0].Nodes;
        var product = body.Single(n => n.Op.Name == "einsum" && n.Inputs.Length == 2
            && n.Attr<DimsAttr>("output").Names is [var joined, "d_model"] && joined.StartsWith("fused.", StringComparison.Ordinal));
        var split = body.Single(n => n.Op.Name == "split" && n.Inputs[0] == product.Outputs[0]);
        Assert.Equal(0, split.Inputs[0].Type.IndexOf(split.Attr<DimsAttr>("along").Names[0]));
        var users = body.Where(n => split.Outputs.Any(n.Inputs.Contains)).ToList();
        Assert.All(users, n => Assert.Equal("reshape", n.Op.Name));
        Assert.DoesNotContain(body, n => n.Op.Name == "transpose" && users.Any(u => u.Outputs.Contains(n.Inputs[0])));
    }

    /// <summary>The weights a join in <paramref name="loop"/>'s body reads (through reshapes and transposes of its
    /// per-layer slices), by the name of the loop operand each comes from; one list per such join.</summary>
    private static List<string[]> WeightJoins(Node loop)
    {
        var region = loop.Regions[0];
        var producer = region.Nodes.SelectMany(n => n.Outputs.Select(o => (o, n))).ToDictionary(p => p.o, p => p.n);
        string? Weight(Value v)
        {
            while (producer.TryGetValue(v, out var p) && IsLayout(p)) v = p.Inputs[0];
            var i = region.Args.IndexOf(v);
            return i >= 0 && loop.Inputs[i].Name.StartsWith("w_", StringComparison.Ordinal) ? loop.Inputs[i].Name : null;
        }
        return [.. region.Nodes.Where(n => n.Op.Name == "concat").Select(n => n.Inputs.Select(Weight).ToArray())
            .Where(ws => ws.All(w => w is not null)).Select(ws => ws.Select(w => w!).ToArray())];
    }

    [Theory]
    [InlineData("data=1,model=1")]
    [InlineData("data=2,model=2")]
    public void TheBackwardJoinsTheWeightsInTheForwardsOrder(string mesh)
    {
        // Autodiff emits the backward's input-gradient terms in reverse (up, gate, v, k, q). Joined in that order, the
        // transposed weights are not the forward's join transposed, and code generation could not read either join
        // as a view of the weights kept side by side (ParameterGroups): both copy 2 x 21.6 MB a layer on palm-cpu.
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var fused = TrainingCompiler.Compile(g, Mesh.Parse(mesh), new TrainingConfig { Fuse = true });
        var forward = WeightJoins(ForwardLoop(fused.Local));
        var backward = WeightJoins(BackwardLoop(fused.Local));
        Assert.Contains(forward, j => j.Length == 5);
        Assert.All(backward, b => Assert.Contains(forward, f => f.SequenceEqual(b)));
        Assert.Contains(backward, j => j.Length == 5);
        // The weight gradients' product comes out in the same order: its split pieces feed d_w_q ... d_w_up.
        var body = BackwardLoop(fused.Local).Regions[0];
        var split = body.Nodes.Single(n => n.Op.Name == "split" && n.Outputs.Length == 5 && n.Inputs[0].Type.Rank == 2);
        var order = split.Outputs.Select(o => Ultimately(body, o)).ToArray();
        Assert.Equal([.. order.Order()], order);
    }

    /// <summary>The index among <paramref name="body"/>'s results that <paramref name="v"/> becomes through layout ops.</summary>
    private static int Ultimately(Block body, Value v)
    {
        while (body.Results.IndexOf(v) < 0)
            v = body.Nodes.Single(n => n.Inputs.Contains(v) && IsLayout(n)).Outputs[0];
        return body.Results.IndexOf(v);
    }

    /// <summary>A layout view, or a per-layer gather or scatter of a weight or its gradient on a mesh.</summary>
    private static bool IsLayout(Node n) =>
        n.Inputs.Length == 1 && (n.Op.Name is "reshape" or "transpose" || n.Op.Sharding(n) == ShardingRule.Collective);
}
