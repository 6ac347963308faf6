using PaLM.Runtime.Training;
using static TorchSharp.torch;
using static PaLM.Runtime.Tests.TestUtil;

namespace PaLM.Runtime.Tests;

/// <summary>
/// Checkpoints saved shard by shard (one writer per device, as the ranks of an MPI job write them) are the same
/// folders Save writes, load the same way, and a save that stops before its commit leaves the previous checkpoint.
/// </summary>
public sealed class ShardedCheckpointTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "palmc-sharded-" + Guid.NewGuid().ToString("N"));

    public ShardedCheckpointTests() => Init();

    public void Dispose()
    {
        if (Directory.Exists(_root))
            Directory.Delete(_root, recursive: true);
    }

    private static List<(string, Tensor)> Shard(int device) =>
        [("w", Randn(10 + device, 3, 4)), ("bf16", Randn(20 + device, 5).to_type(ScalarType.BFloat16)), ("i64", tensor(new[] { (long)device, -7L }))];

    private void SaveSharded(string dir, long step, IReadOnlyList<List<(string, Tensor)>> shards, Dictionary<string, string> meta)
    {
        Checkpoint.BeginSharded(dir, step);
        // Writers in parallel, as separate processes would be.
        Parallel.For(0, shards.Count, d => Checkpoint.SaveShard(dir, step, d, shards[d]));
        Checkpoint.CommitSharded(dir, step, shards.Count, meta);
    }

    [Fact]
    public void ShardedSaveWritesWhatSaveWritesAndLoadsPerDevice()
    {
        using var scope = Rt.Scope();
        var shards = Enumerable.Range(0, 3).Select(Shard).ToList();
        var meta = new Dictionary<string, string> { ["program"] = "p", ["mesh"] = "data=3" };
        var sharded = Path.Combine(_root, "sharded");
        var whole = Path.Combine(_root, "whole");
        SaveSharded(sharded, 4, shards, meta);
        Checkpoint.Save(whole, new CheckpointData(4, [.. shards], meta));

        // Byte-identical folders: data files and manifest.
        foreach (var f in new[] { "device-0.bin", "device-1.bin", "device-2.bin", "manifest.json" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(whole, "step-00000004", f)), File.ReadAllBytes(Path.Combine(sharded, "step-00000004", f)));
        Assert.Equal(new[] { "manifest.json", "device-0.bin", "device-1.bin", "device-2.bin" }.Order(),
            Directory.GetFiles(Path.Combine(sharded, "step-00000004")).Select(Path.GetFileName).Order());
        Assert.Empty(Directory.GetDirectories(sharded, ".tmp-*"));

        var all = Checkpoint.LoadLatest(sharded)!;
        for (int d = 0; d < 3; d++) AssertSameTensors(shards[d], all.Devices[d]);
        var one = Checkpoint.LoadLatest(sharded, onlyDevice: 1)!;
        Assert.Equal(3, one.Devices.Count);
        Assert.Empty(one.Devices[0]);
        Assert.Empty(one.Devices[2]);
        AssertSameTensors(shards[1], one.Devices[1]);
    }

    [Fact]
    public void AnUncommittedSaveLeavesThePreviousCheckpointAndIsCleanedUp()
    {
        using var scope = Rt.Scope();
        var shards = Enumerable.Range(0, 2).Select(Shard).ToList();
        var meta = new Dictionary<string, string>();
        SaveSharded(_root, 2, shards, meta);
        // Step 4: both shards written, no commit (a rank died).
        Checkpoint.BeginSharded(_root, 4);
        Checkpoint.SaveShard(_root, 4, 0, shards[0]);
        Checkpoint.SaveShard(_root, 4, 1, shards[1]);
        Assert.Equal(2, Checkpoint.LoadLatest(_root)!.Step);
        // A commit with a shard missing refuses, naming the device.
        Checkpoint.BeginSharded(_root, 6);
        Checkpoint.SaveShard(_root, 6, 0, shards[0]);
        var e = Assert.Throws<InvalidOperationException>(() => Checkpoint.CommitSharded(_root, 6, 2, meta));
        Assert.Contains("device 1 wrote no shard", e.Message);
        Assert.Equal(2, Checkpoint.LoadLatest(_root)!.Step);
        // The next complete save removes the leftovers of both.
        Directory.SetLastWriteTimeUtc(Checkpoint.StagingFolder(_root, 4), DateTime.UtcNow.AddMinutes(-1));
        Directory.SetLastWriteTimeUtc(Checkpoint.StagingFolder(_root, 6), DateTime.UtcNow.AddMinutes(-1));
        SaveSharded(_root, 8, shards, meta);
        Assert.Empty(Directory.GetDirectories(_root, ".tmp-*"));
        Assert.Equal(8, Checkpoint.LoadLatest(_root)!.Step);
        // A damaged shard of another device does not stop a per-device load of this one (its digest is that rank's to check),
        // but its own damage does.
        var file1 = Path.Combine(_root, "step-00000008", "device-1.bin");
        var bytes = File.ReadAllBytes(file1);
        bytes[0] ^= 0xff;
        File.WriteAllBytes(file1, bytes);
        Assert.Equal(8, Checkpoint.LoadLatest(_root, onlyDevice: 0)!.Step);
        var warnings = new List<string>();
        Assert.Equal(2, Checkpoint.LoadLatest(_root, warnings.Add, onlyDevice: 1)!.Step);
        Assert.Contains(warnings, w => w.Contains("device-1.bin has SHA-256"));
    }

    private static void AssertSameTensors(IReadOnlyList<(string Name, Tensor Tensor)> expected, IReadOnlyList<(string Name, Tensor Tensor)> got)
    {
        Assert.Equal(expected.Select(e => e.Name), got.Select(g => g.Name));
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.Equal(expected[i].Tensor.dtype, got[i].Tensor.dtype);
            Assert.Equal(expected[i].Tensor.shape, got[i].Tensor.shape);
            Assert.True(expected[i].Tensor.contiguous().bytes.SequenceEqual(got[i].Tensor.bytes), $"bytes of {expected[i].Name} differ");
        }
    }
}
