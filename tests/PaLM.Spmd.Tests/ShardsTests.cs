using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Spmd.Tests;

/// <summary>
/// <see cref="Shards"/> inverts <see cref="Rt.ShardOf"/>: pieces cut over random meshes and dim shardings assemble back to
/// the whole tensor, and a partitioned program's whole parameters are exactly the unpartitioned program's.
/// </summary>
public sealed class ShardsTests
{
    public static TheoryData<string, string> Cuts => new()
    {
        { "data=2,model=2", "data|model|" },
        { "data=2,model=2", "|data,model|" },
        { "data=2,model=2", "model,data||" },
        { "pod=2,data=2,model=2", "pod|model|data" },
        { "data=4,model=2", "model||data" },
        { "data=3", "||" },
    };

    [Theory]
    [MemberData(nameof(Cuts))]
    public void AssembleInvertsShardOf(string meshText, string cut)
    {
        Rt.Initialize();
        var axes = cut.Split('|').Select(a => a.Length == 0 ? Array.Empty<string>() : a.Split(',')).ToArray();
        var mesh = MeshOf(meshText);
        var shape = axes.Select((a, d) => (long)(2 + d) * (a.Length == 0 ? 1 : mesh.GroupSize(a))).ToArray();
        var spec = new TensorSpec("t", ScalarType.Float32, shape, axes.Select((_, d) => $"d{d}").ToArray(), axes);
        using var whole = randn(shape, generator: new Generator(7));
        var pieces = InProcessMesh.Run(mesh, device => Rt.ShardOf(device, whole, axes));
        using var back = Shards.Assemble(mesh, spec, pieces);
        Assert.True(Same(back, whole));
        foreach (var p in pieces) p.Dispose();
    }

    [Fact]
    public void APieceOfTheWrongShapeIsRefusedByName()
    {
        var mesh = MeshOf("data=2");
        var spec = new TensorSpec("w_q", ScalarType.Float32, [4, 3], ["a", "b"], [["data"], []]);
        // [1, 3] would broadcast over its [2, 3] place if copied as is.
        var e = Assert.Throws<ArgumentException>(() => Shards.Assemble(mesh, spec, [zeros(2, 3), zeros(1, 3)]));
        Assert.Contains("'w_q'", e.Message);
        Assert.Contains("device 1", e.Message);
    }

    [Theory]
    [InlineData("data=2,model=2")]
    [InlineData("pod=2,data=2,model=2")]
    public void WholeParametersAreTheUnpartitionedProgramsBitForBit(string meshText)
    {
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var partitioned = SpmdHarness.Compile(SpmdCompiler.Compile(g, Mesh.Parse(meshText)).Local);
        var single = SpmdHarness.Compile(g);
        Assert.Equal(MeshOf(meshText).DeviceCount, partitioned.Mesh.DeviceCount);
        using var scope = NewDisposeScope();
        var whole = Shards.InitWhole(partitioned, seed: 11);
        var expected = single.InitParameters(11);
        Assert.Equal(expected.Length, whole.Length);
        for (int i = 0; i < whole.Length; i++)
            Assert.True(Same(whole[i], expected[i]), $"{partitioned.Parameters[i].Name} differs");
    }

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.eq(b).all().item<bool>();

    private static MeshShape MeshOf(string text)
    {
        var axes = text.Split(',').Select(a => a.Split('=')).ToArray();
        return new MeshShape(axes.Select(a => a[0]).ToArray(), axes.Select(a => long.Parse(a[1])).ToArray());
    }
}
