using System.Text;
using System.Text.Json;
using TorchSharp;

namespace PaLM.Runtime.Training;

// Saving one checkpoint from several processes, each holding some devices' shards (an MPI job): the same folder
// layout and manifest as Save, so either kind of run resumes from either kind of checkpoint.
//
//   process of device 0:  BeginSharded  ─┐                                 ┌─ CommitSharded
//   every process:                      barrier ─ SaveShard (own devices) ─ barrier ─────────── barrier
//
// The staging folder is .tmp-step-{step}-shards in the checkpoint folder, which must be one file system that every
// process sees (a local disk for one host, a shared one such as NFS across hosts). Each SaveShard writes
// device-{i}.bin and device-{i}.entry.json (its manifest entry: size, SHA-256, tensors); CommitSharded checks every
// entry against its file's size, writes the manifest last and renames the folder into place, exactly as Save does.
// A crash anywhere before the rename leaves a .tmp- folder, which the next save deletes, and the previous checkpoint.
public static partial class Checkpoint
{
    private const string ShardEntrySuffix = ".entry.json";

    /// <summary>The staging folder of a sharded save of <paramref name="step"/>.</summary>
    public static string StagingFolder(string dir, long step) => Path.Combine(Path.GetFullPath(dir), $"{TempPrefix}step-{step}-shards");

    /// <summary>
    /// Starts a sharded save of <paramref name="step"/> (call on one process, then a barrier): creates the checkpoint
    /// folder and an empty staging folder, deleting a stale one left by a crashed save of the same step.
    /// </summary>
    public static void BeginSharded(string dir, long step)
    {
        ArgumentException.ThrowIfNullOrEmpty(dir);
        ArgumentOutOfRangeException.ThrowIfNegative(step);
        RequireLittleEndian();
        Directory.CreateDirectory(dir);
        var staging = StagingFolder(dir, step);
        if (Directory.Exists(staging))
            Directory.Delete(staging, recursive: true);
        Directory.CreateDirectory(staging);
    }

    /// <summary>
    /// Writes device <paramref name="device"/>'s tensors into the staging folder of <paramref name="step"/> (after
    /// <see cref="BeginSharded"/> and a barrier): its data file, flushed to disk, and then its manifest entry.
    /// </summary>
    public static void SaveShard(string dir, long step, int device, IReadOnlyList<(string Name, torch.Tensor Tensor)> tensors)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(device);
        ArgumentNullException.ThrowIfNull(tensors);
        var staging = StagingFolder(dir, step);
        if (!Directory.Exists(staging))
            throw new InvalidOperationException($"no staging folder {staging}: BeginSharded must run (and a barrier pass) before SaveShard");
        ValidateForSave(new CheckpointData(step, Enumerable.Repeat<IReadOnlyList<(string, torch.Tensor)>>([], device).Append(tensors).ToList(),
            new Dictionary<string, string>()));
        var entry = WriteDeviceFile(Path.Combine(staging, DeviceFileName(device)), tensors);
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
            WriteDevice(w, entry);
        var tmp = Path.Combine(staging, $"{TempPrefix}{device}-{Guid.NewGuid():N}");
        WriteAllBytesDurably(tmp, buffer.ToArray());
        File.Move(tmp, Path.Combine(staging, DeviceFileName(device) + ShardEntrySuffix));   // the entry appears whole or not at all
    }

    /// <summary>
    /// Finishes a sharded save (call on one process after every <see cref="SaveShard"/> and a barrier): checks that all
    /// <paramref name="devices"/> entries and files are there and agree, writes the manifest, renames the folder into
    /// place, updates <c>latest</c> and prunes to <paramref name="keep"/>, as <see cref="Save"/> does. Returns the folder.
    /// </summary>
    public static string CommitSharded(string dir, long step, int devices, IReadOnlyDictionary<string, string> metadata, int keep = 3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(devices, 1);
        ArgumentNullException.ThrowIfNull(metadata);
        ArgumentOutOfRangeException.ThrowIfLessThan(keep, 1);
        var started = DateTime.UtcNow;
        dir = Path.GetFullPath(dir);
        var staging = StagingFolder(dir, step);
        var entries = new List<DeviceEntry>(devices);
        for (int i = 0; i < devices; i++)
        {
            var entryPath = Path.Combine(staging, DeviceFileName(i) + ShardEntrySuffix);
            if (!File.Exists(entryPath))
                throw new InvalidOperationException($"checkpoint step {step}: device {i} wrote no shard ({entryPath} is missing)");
            DeviceEntry entry;
            using (var doc = JsonDocument.Parse(File.ReadAllBytes(entryPath)))
                entry = ParseDevice(doc.RootElement, i);
            var file = new FileInfo(Path.Combine(staging, entry.File));
            if (!file.Exists || file.Length != entry.Bytes)
                throw new InvalidOperationException($"checkpoint step {step}: device {i}'s shard {file.Name} is missing or not {entry.Bytes} bytes");
            entries.Add(entry);
        }
        foreach (var i in Enumerable.Range(0, devices))
            File.Delete(Path.Combine(staging, DeviceFileName(i) + ShardEntrySuffix));

        var data = new CheckpointData(step, [], metadata);
        var name = FolderName(step);
        try
        {
            FailPoint(step);
            WriteAllBytesDurably(Path.Combine(staging, ManifestFileName), ManifestJson(data, entries));
            MoveIntoPlace(dir, staging, Path.Combine(dir, name), name);
        }
        catch
        {
            TryDelete(staging);
            throw;
        }
        var latestTmp = Path.Combine(dir, $"{TempPrefix}latest-{Guid.NewGuid():N}");
        WriteAllBytesDurably(latestTmp, Encoding.UTF8.GetBytes(name + "\n"));
        File.Move(latestTmp, Path.Combine(dir, LatestFileName), overwrite: true);
        Prune(dir, step, keep);
        DeleteLeftovers(dir, started);
        return Path.Combine(dir, name);
    }
}
