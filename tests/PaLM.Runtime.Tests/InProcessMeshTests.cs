using System.Diagnostics;
using PaLM.Runtime;
using static TorchSharp.torch;
using static PaLM.Runtime.Tests.TestUtil;

namespace PaLM.Runtime.Tests;

public sealed class InProcessMeshTests
{
    public InProcessMeshTests() => Init();

    public static TheoryData<string, long[]> Meshes => new()
    {
        { "model", [2] },
        { "model", [4] },
        { "model", [8] },
        { "data,model", [2, 2] },
        { "data,model", [2, 4] },
        { "data,model", [4, 2] },
        { "pod,data,model", [2, 2, 2] },
    };

    private static MeshShape Mesh(string names, long[] sizes) => new(names.Split(','), sizes);

    /// <summary>Every ordered subset of the mesh axes, the empty one included (["model","data"] and ["data","model"] differ).</summary>
    private static List<string[]> OrderedSubsets(string[] names)
    {
        var all = new List<string[]> { Array.Empty<string>() };
        for (int i = 0; i < all.Count; i++)
        {
            foreach (var n in names)
            {
                if (!all[i].Contains(n))
                    all.Add([.. all[i], n]);
            }
        }
        return all;
    }

    private static void ExpectEqual(Tensor expected, Tensor actual, string what)
    {
        if (expected.dtype != actual.dtype || !expected.shape.SequenceEqual(actual.shape) || !Same(expected, actual))
            Assert.Fail($"{what}: expected {expected.dtype}[{string.Join(",", expected.shape)}], got {actual.dtype}[{string.Join(",", actual.shape)}]"
                + (expected.shape.SequenceEqual(actual.shape) ? " with different values" : ""));
    }

    private static void ExpectClose(Tensor expected, Tensor actual, string what)
    {
        if (!expected.shape.SequenceEqual(actual.shape) || !expected.allclose(actual, 1e-6, 1e-6))
            Assert.Fail($"{what}: sums differ");
    }

    private static bool Same(Tensor a, Tensor b)
    {
        using var eq = a.eq(b);
        using var all = eq.all();
        return a.shape.SequenceEqual(b.shape) && all.item<bool>();
    }

    // In group order, like the collective; the tolerance would absorb a different order, not a wrong member.
    private static Tensor SumOf(Tensor[] xs) => xs.Skip(1).Aggregate(xs[0], (s, t) => s.add(t));

    [Fact]
    public void CoordsAndRankRoundTrip()
    {
        var mesh = new MeshShape(["data", "model"], [2, 4]);
        Assert.Equal(8, mesh.DeviceCount);
        Assert.Equal([1L, 1L], mesh.Coords(5));             // row-major, first axis major
        Assert.Equal(7, mesh.Rank([1, 3]));
        Assert.Equal("data=2, model=4", mesh.ToString());
        Assert.Equal(4, mesh.Size("model"));
        Assert.Equal(["data", "model"], mesh.AxisNames);
        Assert.Equal([2L, 4L], mesh.AxisSizes);
        foreach (var (names, sizes) in Meshes.Select(r => ((string)r[0], (long[])r[1])))
        {
            var m = Mesh(names, sizes);
            for (int r = 0; r < m.DeviceCount; r++)
                Assert.Equal(r, m.Rank(m.Coords(r)));
        }
        Assert.Equal(1, MeshShape.Single.DeviceCount);
        Assert.Empty(MeshShape.Single.Coords(0));
        Assert.Equal(0, MeshShape.Single.Rank([]));
    }

    [Fact]
    public void MeshShapeRejectsBadInput()
    {
        Assert.Throws<ArgumentException>(() => new MeshShape(["a", "a"], [2, 2]));
        Assert.Throws<ArgumentException>(() => new MeshShape([""], [2]));
        Assert.Throws<ArgumentException>(() => new MeshShape(["a"], [0]));
        Assert.Throws<ArgumentException>(() => new MeshShape(["a"], [2, 2]));
        var mesh = new MeshShape(["data", "model"], [2, 2]);
        var e = Assert.Throws<ArgumentException>(() => mesh.Size("pod"));
        Assert.Contains("'pod'", e.Message);
        Assert.Contains("data, model", e.Message);
        Assert.Throws<ArgumentException>(() => mesh.GroupIndex(0, ["pod"]));
        Assert.Throws<ArgumentException>(() => mesh.GroupSize(["data", "data"]));
        Assert.Throws<ArgumentOutOfRangeException>(() => mesh.Coords(4));
        Assert.Throws<ArgumentOutOfRangeException>(() => mesh.Rank([0, 2]));
    }

    [Fact]
    public void GroupMembersAndIndex()
    {
        var mesh = new MeshShape(["pod", "data", "model"], [2, 2, 2]);   // rank 5 = (pod 1, data 0, model 1)
        Assert.Equal([4, 5], mesh.GroupMembers(5, ["model"]));
        Assert.Equal([5, 7], mesh.GroupMembers(5, ["data"]));
        Assert.Equal([1, 5], mesh.GroupMembers(5, ["pod"]));
        Assert.Equal([4, 5, 6, 7], mesh.GroupMembers(5, ["data", "model"]));
        Assert.Equal([4, 6, 5, 7], mesh.GroupMembers(5, ["model", "data"]));
        Assert.Equal([0, 1, 4, 5], mesh.GroupMembers(5, ["pod", "model"]));
        Assert.Equal([5], mesh.GroupMembers(5, []));
        Assert.Equal(2, mesh.GroupIndex(5, ["model", "data"]));
        Assert.Equal(1, mesh.GroupIndex(5, ["data", "model"]));
        Assert.Equal(0, mesh.GroupIndex(5, []));
        Assert.Equal(4, mesh.GroupSize(["pod", "model"]));

        // Generic properties over every mesh and ordered axis subset: the groups partition the devices, each member
        // sits at its GroupIndex, and members differ only on the group's axes.
        foreach (var (names, sizes) in Meshes.Select(r => ((string)r[0], (long[])r[1])))
        {
            var m = Mesh(names, sizes);
            foreach (var axes in OrderedSubsets(m.AxisNames))
            {
                var outside = Enumerable.Range(0, m.AxisNames.Length).Where(k => !axes.Contains(m.AxisNames[k])).ToArray();
                var seen = new HashSet<int>();
                for (int r = 0; r < m.DeviceCount; r++)
                {
                    var members = m.GroupMembers(r, axes);
                    Assert.Equal(m.GroupSize(axes), members.Length);
                    Assert.Equal(r, members[m.GroupIndex(r, axes)]);
                    for (int g = 0; g < members.Length; g++)
                    {
                        Assert.Equal(g, m.GroupIndex(members[g], axes));
                        Assert.Equal(members, m.GroupMembers(members[g], axes));
                        Assert.All(outside, k => Assert.Equal(m.Coords(r)[k], m.Coords(members[g])[k]));
                    }
                    if (m.GroupIndex(r, axes) == 0)
                        Assert.All(members, x => Assert.True(seen.Add(x)));
                }
                Assert.Equal(m.DeviceCount, seen.Count);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Meshes))]
    public void CollectivesMatchASingleThreadedComputation(string names, long[] sizes)
    {
        var mesh = Mesh(names, sizes);
        using var scope = NewDisposeScope();
        // Each device holds an [8, 3, 8] shard of one global tensor: different values on every device.
        var global = Randn(17 + mesh.DeviceCount, mesh.DeviceCount * 8, 3, 8);
        var shards = Enumerable.Range(0, mesh.DeviceCount).Select(r => global.narrow(0, r * 8, 8)).ToArray();
        var subsets = OrderedSubsets(mesh.AxisNames);

        var checkedCount = InProcessMesh.Run(mesh, d =>
        {
            int count = 0;
            var x = shards[d.Rank];
            foreach (var axes in subsets)
            {
                using var step = NewDisposeScope();
                var members = mesh.GroupMembers(d.Rank, axes);
                int size = members.Length, idx = (int)d.ShardIndex(axes);
                Assert.Equal(size, d.ShardCount(axes));
                var xs = members.Select(m => shards[m]).ToArray();
                string at = $"mesh ({mesh}), device {d.Rank}, axes [{string.Join(",", axes)}]";

                foreach (var dim in new long[] { 0, 1, 2, -1 })
                    ExpectEqual(cat(xs, dim), Rt.AllGather(d, x, dim, axes), $"{at}: AllGather dim {dim}");

                var sum = SumOf(xs);
                ExpectClose(sum, Rt.AllReduce(d, x, axes), $"{at}: AllReduce");
                foreach (var dim in new long[] { 0, 2 })
                    ExpectClose(sum.chunk(size, dim)[idx], Rt.ReduceScatter(d, x, dim, axes), $"{at}: ReduceScatter dim {dim}");

                foreach (var (split, concat) in new (long, long)[] { (0, 0), (0, 2), (2, 0), (2, 1), (-1, 1) })
                {
                    var expected = cat(xs.Select(t => t.chunk(size, split)[idx]).ToArray(), concat);
                    ExpectEqual(expected, Rt.AllToAll(d, x, split, concat, axes), $"{at}: AllToAll split {split} concat {concat}");
                }

                ExpectEqual(x.chunk(size, 2)[idx], Rt.ShardSlice(d, x, 2, axes), $"{at}: ShardSlice");
                count++;
            }
            d.Comm.Barrier();
            return count;
        });
        Assert.All(checkedCount, n => Assert.Equal(subsets.Count, n));
    }

    [Fact]
    public void AllReduceIsBitwiseEqualOnEveryMember()
    {
        var mesh = new MeshShape(["data", "model"], [2, 4]);
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            foreach (var axes in new[] { new[] { "model" }, ["data", "model"], ["model", "data"] })
            {
                // Magnitudes spread over 10^-3..10^3 so that a different addition order would round differently.
                var results = InProcessMesh.Run(mesh, d =>
                {
                    using var scope = NewDisposeScope();
                    var x = Randn(100 + d.Rank, 4096).mul(Randn(200 + d.Rank, 4096).mul(3).exp2()).to_type(dtype);
                    return (d.ShardIndex(axes), mesh.GroupMembers(d.Rank, axes)[0], Rt.AllReduce(d, x, axes).MoveToOuterDisposeScope());
                });
                try
                {
                    foreach (var group in results.GroupBy(r => r.Item2))
                    {
                        var first = group.First().Item3;
                        Assert.Equal(dtype, first.dtype);
                        Assert.All(group, r => Assert.True(Same(first, r.Item3), $"{dtype} all-reduce over [{string.Join(",", axes)}] differs between members"));
                    }
                }
                finally
                {
                    foreach (var r in results)
                        r.Item3.Dispose();
                }
            }
        }
    }

    [Fact]
    public void ResultsBelongToTheCallersScope()
    {
        var mesh = new MeshShape(["data", "model"], [2, 2]);
        InProcessMesh.Run(mesh, d =>
        {
            using var x = Randn(d.Rank, 4, 4);
            foreach (var axes in new[] { Array.Empty<string>(), ["model"], ["data", "model"] })
            {
                var results = new List<Tensor>();
                using (NewDisposeScope())
                {
                    results.Add(Rt.AllGather(d, x, 0, axes));
                    results.Add(Rt.ReduceScatter(d, x, 1, axes));
                    results.Add(Rt.AllReduce(d, x, axes));
                    results.Add(Rt.AllToAll(d, x, 0, 1, axes));
                    results.Add(Rt.ShardSlice(d, x, 1, axes));
                }
                Assert.All(results, r => Assert.True(r.IsInvalid, "a collective's result outlived the caller's scope"));
                Assert.False(x.IsInvalid);
                d.Comm.Barrier();   // every member's input is still intact after everyone's scopes closed
                Assert.False(x.IsInvalid);
            }
            return 0;
        });
    }

    [Theory]
    [InlineData("pod,data,model", new long[] { 2, 2, 2 })]
    [InlineData("data,model", new long[] { 2, 4 })]
    public void ShardOfCutsTheGlobalTensorAndAllGatherRestoresIt(string names, long[] sizes)
    {
        var mesh = Mesh(names, sizes);
        var last = mesh.AxisNames[^1];
        var first = mesh.AxisNames[0];
        var rest = mesh.AxisNames.Skip(1).Reverse().ToArray();     // several axes on one dim, minor axis listed first
        string[][] dimAxes = [[first], [], rest];
        using var global = Randn(5, 4, 3, 8);
        InProcessMesh.Run(mesh, d =>
        {
            using var scope = NewDisposeScope();
            var shard = Rt.ShardOf(d, global, dimAxes);
            var expected = global.chunk(d.ShardCount([first]), 0)[d.ShardIndex([first])];
            expected = expected.chunk(d.ShardCount(rest), 2)[d.ShardIndex(rest)];
            ExpectEqual(expected, shard, $"device {d.Rank}: ShardOf");
            Assert.True(shard.is_contiguous());

            var restored = Rt.AllGather(d, Rt.AllGather(d, shard, 2, rest), 0, [first]);
            ExpectEqual(global, restored, $"device {d.Rank}: gathered shards");

            // A replicated ShardOf is a private copy: writing into it leaves the shared global untouched.
            var before = global.clone();
            var replica = Rt.ShardOf(d, global, [[], [], []]);
            ExpectEqual(global, replica, $"device {d.Rank}: replica");
            d.Comm.Barrier();
            replica.add_(1);
            d.Comm.Barrier();
            ExpectEqual(before, global, $"device {d.Rank}: global after writing into the replicas");

            return 0;
        });
        Assert.Throws<ArgumentException>(() => InProcessMesh.Run(mesh, d => Rt.ShardOf(d, global, [[first]])));
        Assert.Throws<ArgumentException>(() => InProcessMesh.Run(mesh, d => Rt.ShardSlice(d, global, 1, [first])));   // 3 is not divisible by 2
    }

    [Fact]
    public void SingleDeviceContextIsTheIdentity()
    {
        var d = DeviceContext.Single;
        Assert.Equal(0, d.Rank);
        Assert.Empty(d.Coords);
        Assert.Equal(1, d.Mesh.DeviceCount);
        Assert.Equal(0, d.ShardIndex([]));
        Assert.Equal(1, d.ShardCount([]));
        using var scope = NewDisposeScope();
        var x = Randn(3, 4, 6);
        ExpectEqual(x, Rt.AllGather(d, x, 0, []), "AllGather");
        ExpectEqual(x, Rt.ReduceScatter(d, x, 0, []), "ReduceScatter");
        ExpectEqual(x, Rt.AllReduce(d, x, []), "AllReduce");
        ExpectEqual(x, Rt.AllToAll(d, x, 0, 1, []), "AllToAll");
        ExpectEqual(x, Rt.ShardOf(d, x, [[], []]), "ShardOf");
        d.Comm.Barrier();
        Assert.Equal([42], InProcessMesh.Run(MeshShape.Single, c => { c.Comm.Barrier(); return Same(Rt.AllReduce(c, x, []), x) ? 42 : 0; }));
    }

    [Fact]
    public void DevicesRunOnNamedDedicatedThreads()
    {
        var mesh = new MeshShape(["data", "model"], [2, 2]);
        var seen = InProcessMesh.Run(mesh, d =>
            (Thread.CurrentThread.Name, Thread.CurrentThread.IsThreadPoolThread, Environment.CurrentManagedThreadId, get_num_threads()));
        Assert.Equal(["palm-device-0", "palm-device-1", "palm-device-2", "palm-device-3"], seen.Select(s => s.Name));
        Assert.All(seen, s => Assert.False(s.IsThreadPoolThread));
        Assert.Equal(4, seen.Select(s => s.CurrentManagedThreadId).Distinct().Count());
        Assert.All(seen, s => Assert.Equal(Math.Max(1, Environment.ProcessorCount / 4), s.Item4));
        Assert.All(InProcessMesh.Run(mesh, _ => get_num_threads(), threadsPerDevice: 3), n => Assert.Equal(3, n));
    }

    [Fact]
    public void AFailingDeviceReleasesTheOthersAndItsExceptionIsRethrown()
    {
        var mesh = new MeshShape(["data", "model"], [2, 4]);

        // Device 3 fails before any collective while the others wait in one.
        var e = RunWithin(10, () => InProcessMesh.Run(mesh, d =>
        {
            if (d.Rank == 3)
                throw new InvalidOperationException("device 3 failed");
            using var x = Randn(d.Rank, 4);
            using var y = Rt.AllReduce(d, x, ["data", "model"]);
            return 0;
        }));
        Assert.IsType<InvalidOperationException>(e);
        Assert.Equal("device 3 failed", e.Message);

        // Device 1 fails midway: groups without it finish their collective and then wait in a Barrier; the others
        // swallow their cancellation and return normally, and Run still reports the original failure.
        e = RunWithin(10, () => InProcessMesh.Run(mesh, d =>
        {
            using var x = Randn(d.Rank, 8);
            using var a = Rt.AllReduce(d, x, ["model"]);
            if (d.Rank == 1)
                throw new FormatException("device 1 failed");
            try
            {
                using var b = Rt.AllGather(d, x, 0, ["model"]);
                d.Comm.Barrier();
            }
            catch (OperationCanceledException)
            {
            }
            return 0;
        }));
        Assert.IsType<FormatException>(e);
        Assert.Equal("device 1 failed", e.Message);

        // An argument error on every device (unknown axis) comes back as itself.
        e = RunWithin(10, () => InProcessMesh.Run(mesh, d => Rt.AllReduce(d, Randn(0, 2), ["pod"])));
        Assert.IsType<ArgumentException>(e);
        Assert.Contains("'pod'", e.Message);
    }

    [Fact]
    public void MismatchedCollectivesFailLoudly()
    {
        var mesh = new MeshShape(["model"], [2]);
        var e = RunWithin(10, () => InProcessMesh.Run(mesh, d =>
        {
            using var x = Randn(d.Rank, 4);
            using var y = d.Rank == 0 ? Rt.AllGather(d, x, 0, ["model"]) : Rt.AllReduce(d, x, ["model"]);
            return 0;
        }));
        Assert.IsType<InvalidOperationException>(e);
        Assert.Contains("Mismatched collectives", e.Message);

        e = RunWithin(10, () => InProcessMesh.Run(mesh, d =>
        {
            using var x = Randn(d.Rank, 4 + d.Rank);
            using var y = Rt.AllReduce(d, x, ["model"]);
            return 0;
        }));
        Assert.IsType<InvalidOperationException>(e);
        Assert.Contains("must match", e.Message);
    }

    /// <summary>Runs <paramref name="run"/> expecting it to throw within <paramref name="seconds"/>; returns what it threw.</summary>
    private static Exception RunWithin(int seconds, Action run)
    {
        var sw = Stopwatch.StartNew();
        var task = Task.Factory.StartNew(run, TaskCreationOptions.LongRunning);
        bool done;
        try
        {
            done = task.Wait(TimeSpan.FromSeconds(seconds));
        }
        catch (AggregateException)
        {
            done = true;
        }
        Assert.True(done, $"InProcessMesh.Run did not return within {seconds} s");
        Assert.True(task.IsFaulted, "InProcessMesh.Run did not throw");
        Assert.InRange(sw.Elapsed.TotalSeconds, 0, seconds);
        var inner = task.Exception!.InnerExceptions;
        Assert.Single(inner);                                   // the original, not an aggregate of cancellations
        return inner[0];
    }
}

/// <summary>Tests that set libtorch's thread counts run alone, so other tests cannot move the process-wide default meanwhile.</summary>
[CollectionDefinition(nameof(ThreadCountCollection), DisableParallelization = true)]
public sealed class ThreadCountCollection;

[Collection(nameof(ThreadCountCollection))]
public sealed class InProcessMeshThreadCountTests
{
    public InProcessMeshThreadCountTests() => Init();

    /// <summary>
    /// Documents the finding in InProcessMesh: torch.set_num_threads is per thread (OpenMP's nthreads ICV), but a
    /// thread's first parallel op or get_num_threads re-applies the process-wide last-set value to that thread once.
    /// </summary>
    [Fact]
    public void SetNumThreadsIsPerThreadOnceTheThreadIsInitialized()
    {
        // The pitfall: a fresh thread that sets its count before its lazy init loses it to whatever was set last anywhere.
        int seen = 0;
        using (var step = new Barrier(2))
        {
            var a = new Thread(() => { set_num_threads(1); step.SignalAndWait(); step.SignalAndWait(); seen = get_num_threads(); });
            var b = new Thread(() => { step.SignalAndWait(); set_num_threads(3); step.SignalAndWait(); });
            a.Start(); b.Start(); a.Join(); b.Join();
        }
        Assert.Equal(3, seen);

        // Set, lazy-init, set again: then the count sticks to the thread whatever others set (what device threads do).
        set_num_threads(2);
        _ = get_num_threads();
        set_num_threads(2);
        var inside = InProcessMesh.Run(new MeshShape(["data", "model"], [2, 2]), d =>
        {
            // Devices with different counts at once, each keeping its own across a barrier.
            int mine = 1 + d.Rank % 2;
            set_num_threads(mine);
            d.Comm.Barrier();
            using var m = Randn(d.Rank, 64, 64);
            using var p = m.mm(m);                               // a parallel op after the others have set theirs
            return (mine, get_num_threads());
        }, threadsPerDevice: 1);
        Assert.All(inside, r => Assert.Equal(r.mine, r.Item2));
        Assert.Equal(2, get_num_threads());                      // the devices' settings did not reach this thread

        // Run gives the process-wide default back to the caller's count, so fresh threads afterwards get 2, not 1.
        var fresh = 0;
        var t = new Thread(() => fresh = get_num_threads());
        t.Start();
        t.Join();
        Assert.Equal(2, fresh);
    }
}
