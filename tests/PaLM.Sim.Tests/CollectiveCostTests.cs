using PaLM.IR;

namespace PaLM.Sim.Tests;

/// <summary>The α-β collective formulas and the placement on pods, against cases worked by hand from the catalog's figures.</summary>
public sealed class CollectiveCostTests
{
    private static readonly HardwareCatalog Catalog = HardwareCatalog.Load(readEnvironment: false);
    private static Hardware Tpu => Catalog.Get("tpu-v4");
    private static Topology PaperMesh => new(Tpu, Mesh.Parse("pod=2,data=256,model=12"));
    private const double V = 1e9;   // bytes

    [Fact]
    public void SixThousandChipsAreTwoPodsOfThreeThousand()
    {
        var t = PaperMesh;
        Assert.Equal(6144, t.Devices);
        Assert.Equal(2, t.Pods);
        Assert.Equal(3072, t.ChipsPerPod);
        Assert.Equal(1536, t.Hosts);
        Assert.Equal((256L * 12, 1L, 3), t.Split(["data", "model"]));
        Assert.Equal((1L, 2L, 0), t.Split(["pod"]));
        Assert.Equal((256L, 2L, 2), t.Split(["pod", "data"]));
        // 4097 chips cannot be split evenly over two pods.
        Assert.Throws<SimulationException>(() => new Topology(Tpu, Mesh.Parse("data=4097")));
    }

    [Fact]
    public void AllGatherOverTwelveChipsIsOneBidirectionalRing()
    {
        // model=12 spans one torus dim: 11 latency steps of 1 µs, 11/12 of V over 2 links of 45 GB/s.
        var c = PaperMesh.Cost(CollectiveOp.AllGather, ["model"], V);
        Assert.Equal(11 * 1e-6 + 11.0 / 12 * V / 9e10, c.Seconds, 12);
        Assert.Equal(0, c.CrossPodBytesPerChip);
    }

    [Fact]
    public void AllReduceOverTheDataAxisUsesTwoTorusDims()
    {
        // data=256 spans two dims of 16: 2·15 latency steps per phase, 4 links of 45 GB/s; reduce-scatter + all-gather.
        var c = PaperMesh.Cost(CollectiveOp.AllReduce, ["data"], V);
        Assert.Equal(2 * (30 * 1e-6 + 255.0 / 256 * V / 1.8e11), c.Seconds, 12);
    }

    [Fact]
    public void AllReduceAcrossPodsGoesOverTheHostNetwork()
    {
        // Two pods, one member in each: a ring of 2 over DCN at 25 GB/s per host shared by its 4 chips.
        var c = PaperMesh.Cost(CollectiveOp.AllReduce, ["pod"], V);
        Assert.Equal(2 * (1e-5 + 0.5 * V / 6.25e9), c.Seconds, 12);
        Assert.Equal(V, c.CrossPodBytesPerChip, 3);   // all-reduce over 2: each chip sends half, twice
    }

    [Fact]
    public void HierarchicalAllReduceSendsOnlyThePodsShareAcross()
    {
        var c = PaperMesh.Cost(CollectiveOp.AllReduce, ["pod", "data"], V);
        double inPod = 2 * (30 * 1e-6 + 255.0 / 256 * V / 1.8e11);
        double cross = 2 * (1e-5 + 0.5 * (V / 256) / 6.25e9);
        Assert.Equal(inPod + cross, c.Seconds, 12);
        Assert.Equal(V / 256, c.CrossPodBytesPerChip, 3);
    }

    [Fact]
    public void AllToAllOnARingIsAQuarterOfTheAllGatherOfItsResult()
    {
        var c = PaperMesh.Cost(CollectiveOp.AllToAll, ["model"], V);
        Assert.Equal(11 * 1e-6 + V * 12 / (4 * 9e10), c.Seconds, 12);
    }

    [Fact]
    public void NvSwitchNodeRingAndInfiniBandAcrossNodes()
    {
        var h100 = Catalog.Get("h100-sxm");
        var t = new Topology(h100, Mesh.Parse("data=4,model=8"));   // 4 nodes of 8 GPUs
        Assert.Equal(4, t.Pods);
        var ag = t.Cost(CollectiveOp.AllGather, ["model"], V);
        Assert.Equal(7 * 3e-6 + 7.0 / 8 * V / (18 * 2.5e10), ag.Seconds, 12);
        // data crosses nodes: 8 GPUs share 400 GB/s, a ring of 4.
        var rs = t.Cost(CollectiveOp.ReduceScatter, ["data"], V);
        Assert.Equal(3 * 1e-5 + 0.75 * V / 5e10, rs.Seconds, 12);
        Assert.Equal(0.75 * V, rs.CrossPodBytesPerChip, 3);
    }

    [Fact]
    public void AnAxisThatWouldStraddleAPodBoundaryIsRefused()
    {
        var c = HardwareCatalog.Load(readEnvironment: false);
        c.AddText("""
            { "name": "small", "peak_flops": { "bf16": 1e12 }, "memory_bytes": 1e9, "memory_bandwidth": 1e11, "chips_per_host": 2, "chips_per_pod": 8,
              "interconnect": { "topology": "switch", "links_per_chip": 1, "link_bandwidth": 1e10 }, "network": { "bandwidth_per_host": 1e9 } }
            """, "test");
        // 12 chips are two pods of 6: model groups of 4 would cross from one pod into the next.
        var e = Assert.Throws<SimulationException>(() => new Topology(c.Get("small"), Mesh.Parse("data=3,model=4")));
        Assert.Contains("straddles pods", e.Message);
        Assert.Equal((3L, 1L, 0), new Topology(c.Get("small"), Mesh.Parse("data=2,model=3")).Split(["model"]));
    }

    [Fact]
    public void TorusDimsAreSharedOutOnceOverTheAxes()
    {
        // 6144 chips, pod=1: data=1024 spans both pods (512 in each), model=6 takes one torus dim, data the other two.
        var t = new Topology(Tpu, Mesh.Parse("pod=1,data=1024,model=6"));
        Assert.Equal((6L, 1L, 1), t.Split(["model"]));
        Assert.Equal((512L, 2L, 2), t.Split(["data"]));
        Assert.Equal((3072L, 2L, 3), t.Split(["data", "model"]));
    }

    [Fact]
    public void AGroupOfOneCostsNothing() =>
        Assert.Equal(default, new Topology(Tpu, Mesh.Parse("data=4,model=1")).Cost(CollectiveOp.AllReduce, ["model"], V));
}
