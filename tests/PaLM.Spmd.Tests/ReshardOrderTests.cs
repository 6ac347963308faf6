using PaLM.IR;

namespace PaLM.Spmd.Tests;

/// <summary>How pending sums are reduced: reduce-scatter first, then all-reduce what is left on the smaller piece.</summary>
public sealed class ReshardOrderTests
{
    private static readonly Mesh Mesh = Mesh.Parse("pod=2,data=4,model=3");
    private static readonly TensorType T = new(DType.F32, new Dim("rows", 24), new Dim("cols", 6));

    [Fact]
    public void APendingSumOverPodAndDataScattersOverDataBeforeCrossingPods()
    {
        var from = new Sharding([[], []], ["pod", "data"]);
        var to = new Sharding([["data"], []]);
        var steps = Reshard.Plan(T, from, to, Mesh);
        Assert.Equal([CollectiveKind.ReduceScatter, CollectiveKind.AllReduce], steps.Select(s => s.Kind));
        Assert.Equal(["data"], steps[0].Axes.ToArray());
        Assert.Equal(["pod"], steps[1].Axes.ToArray());
        // The all-reduce over pods moves a quarter of the tensor: 2 x (1/2) x (576 B / 4).
        Assert.Equal(T.Bytes * 3 / 4, steps[0].Bytes);
        Assert.Equal(2 * (T.Bytes / 4) / 2, steps[1].Bytes);
        Assert.Equal(to, steps[^1].After);
    }

    [Fact]
    public void ADimSplitOverDataAndModelTakesOneReduceScatterOverBoth()
    {
        var from = new Sharding([[], []], ["model", "data"]);
        var to = new Sharding([["data", "model"], []]);
        var steps = Reshard.Plan(T, from, to, Mesh);
        var step = Assert.Single(steps);
        Assert.Equal(CollectiveKind.ReduceScatter, step.Kind);
        Assert.Equal(["data", "model"], step.Axes.ToArray());
        Assert.Equal(T.Bytes * 11 / 12, step.Bytes);
    }

    [Fact]
    public void EachDimTakesAllItsPendingAxesInOneReduceScatter()
    {
        var mesh = Mesh.Parse("pod=2,data=2,model=3");
        var t = new TensorType(DType.F32, new Dim("rows", 24), new Dim("cols", 6));
        var steps = Reshard.Plan(t, new Sharding([[], []], ["data", "model", "pod"]), new Sharding([["data", "model"], ["pod"]]), mesh);
        Assert.Equal(2, steps.Count);
        Assert.All(steps, s => Assert.Equal(CollectiveKind.ReduceScatter, s.Kind));
        Assert.Equal(["data", "model"], steps[0].Axes.ToArray());
        Assert.Equal(["pod"], steps[1].Axes.ToArray());
    }
}
