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

    private static int Einsums(Node loop) => loop.Regions[0].Nodes.Count(n => n.Op.Name == "einsum");

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
}
