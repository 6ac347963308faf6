using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using TorchSharp;

namespace PaLM.Runtime.Training;

/// <summary>
/// The training state of an SPMD program at one step: for each device (in mesh order) its named shards of
/// parameters and optimizer state, plus free-form string metadata (config, data position, ...).
/// </summary>
/// <param name="Step">The training step the state belongs to (non-negative).</param>
/// <param name="Devices">Per device, its named tensors; names are unique within a device.</param>
/// <param name="Metadata">String key/value pairs stored alongside.</param>
public sealed record CheckpointData(
    long Step,
    IReadOnlyList<IReadOnlyList<(string Name, torch.Tensor Tensor)>> Devices,
    IReadOnlyDictionary<string, string> Metadata);

/// <summary>
/// Atomic, checksummed, resumable checkpoints. A checkpoint is a folder <c>step-{step:D8}</c> holding one
/// <c>device-{i}.bin</c> per device (each tensor's raw little-endian bytes, concatenated) and a
/// <c>manifest.json</c> describing them with a SHA-256 digest per file. Folders appear only complete
/// (written under a temporary name, then renamed), and loading verifies every digest, so a crash or a
/// damaged disk costs at most the newest checkpoint, never a silently wrong resume.
/// </summary>
public static partial class Checkpoint
{
    /// <summary>The manifest format version this code writes and reads.</summary>
    public const int FormatVersion = 1;

    /// <summary>The manifest's file name inside a checkpoint folder.</summary>
    public const string ManifestFileName = "manifest.json";

    /// <summary>The text file in the checkpoint root naming the newest folder (a hint for people and tools).</summary>
    public const string LatestFileName = "latest";

    private const string FormatName = "palmc-checkpoint";
    private const string StepPrefix = "step-";
    private const string TempPrefix = ".tmp-";

    // Tensor.bytes is a Span (at most int.MaxValue bytes), so larger tensors are copied in pieces of this size.
    private const long ChunkBytes = 1L << 30;

    // Element types with a fixed little-endian byte layout that round-trips through Tensor.bytes.
    private static readonly Dictionary<string, torch.ScalarType> s_dtypes = new[]
    {
        torch.ScalarType.Byte, torch.ScalarType.Int8, torch.ScalarType.Int16, torch.ScalarType.Int32,
        torch.ScalarType.Int64, torch.ScalarType.Float16, torch.ScalarType.BFloat16, torch.ScalarType.Float32,
        torch.ScalarType.Float64, torch.ScalarType.Bool,
    }.ToDictionary(t => t.ToString(), StringComparer.Ordinal);

    /// <summary>The folder name of the checkpoint for <paramref name="step"/>: <c>step-{step:D8}</c>.</summary>
    public static string FolderName(long step) => StepPrefix + step.ToString("D8", CultureInfo.InvariantCulture);

    /// <summary>
    /// Saves <paramref name="data"/> as <c><paramref name="dir"/>/step-{step:D8}/</c> and returns that folder's path.
    /// Everything is written into a fresh sibling <c>.tmp-step-{step}-{guid}</c> folder, each file flushed to disk,
    /// the manifest last, and the folder is then renamed into place (an existing folder of that name, from an
    /// earlier run, is moved aside first and deleted after). The <c>latest</c> file is then replaced atomically.
    /// Finally, of the checkpoints at or below this step, only the newest <paramref name="keep"/> complete ones
    /// (this one included) are kept; newer ones (from a run that got further) are left alone. Leftover
    /// <c>.tmp-*</c> entries from before this call (crashed saves) are deleted.
    /// </summary>
    public static string Save(string dir, CheckpointData data, int keep = 3)
    {
        ArgumentException.ThrowIfNullOrEmpty(dir);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentOutOfRangeException.ThrowIfNegative(data.Step);
        ArgumentOutOfRangeException.ThrowIfLessThan(keep, 1);
        RequireLittleEndian();
        ValidateForSave(data);

        var started = DateTime.UtcNow;
        dir = Path.GetFullPath(dir);
        Directory.CreateDirectory(dir);
        var name = FolderName(data.Step);
        var final = Path.Combine(dir, name);
        var tmp = Path.Combine(dir, $"{TempPrefix}step-{data.Step}-{Guid.NewGuid():N}");

        Directory.CreateDirectory(tmp);
        try
        {
            var devices = new List<DeviceEntry>(data.Devices.Count);
            for (var i = 0; i < data.Devices.Count; i++)
                devices.Add(WriteDeviceFile(Path.Combine(tmp, DeviceFileName(i)), data.Devices[i]));
            FailPoint(data.Step);
            // The manifest goes last: a folder with a valid manifest had all its data files flushed before it.
            WriteAllBytesDurably(Path.Combine(tmp, ManifestFileName), ManifestJson(data, devices));
            MoveIntoPlace(dir, tmp, final, name);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }

        var latestTmp = Path.Combine(dir, $"{TempPrefix}latest-{Guid.NewGuid():N}");
        WriteAllBytesDurably(latestTmp, Encoding.UTF8.GetBytes(name + "\n"));
        File.Move(latestTmp, Path.Combine(dir, LatestFileName), overwrite: true);   // rename(2): atomic replacement

        Prune(dir, data.Step, keep);
        DeleteLeftovers(dir, started);
        return final;
    }

    /// <summary>
    /// The newest complete checkpoint in <paramref name="dir"/>, or null when there is none (or no such folder).
    /// Candidates are the <c>step-*</c> folders, newest step first (the <c>latest</c> file is only a hint); one is
    /// used only if its manifest parses and every file's size and SHA-256 match. Corrupt or partial ones are
    /// skipped, each reported through <paramref name="warn"/> with the reason. Tensors are created on the CPU with
    /// the recorded dtype and shape. With <paramref name="onlyDevice"/>, only that device's tensors are read and its
    /// file's digest checked (the other devices' files must exist with the recorded sizes, and their lists come back
    /// empty): how one rank of a multi-process job loads its own shard.
    /// </summary>
    public static CheckpointData? LoadLatest(string dir, Action<string>? warn = null, int? onlyDevice = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(dir);
        if (!Directory.Exists(dir))
            return null;
        RequireLittleEndian();
        var hint = ReadLatestHint(dir);
        foreach (var (step, path) in Candidates(dir))
        {
            CheckpointData data;
            try
            {
                data = LoadFolder(path, step, onlyDevice);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                warn?.Invoke($"Skipping checkpoint '{path}': {Reason(e)}");
                continue;
            }
            if (hint is not null && hint != Path.GetFileName(path))
                warn?.Invoke($"'{Path.Combine(dir, LatestFileName)}' names '{hint}', but the newest complete checkpoint is '{Path.GetFileName(path)}'; loading that.");
            return data;
        }
        if (hint is not null)
            warn?.Invoke($"'{Path.Combine(dir, LatestFileName)}' names '{hint}', but '{dir}' holds no complete checkpoint.");
        return null;
    }

    // ---- saving ----

    private static void ValidateForSave(CheckpointData data)
    {
        ArgumentNullException.ThrowIfNull(data.Devices, nameof(data.Devices));
        ArgumentNullException.ThrowIfNull(data.Metadata, nameof(data.Metadata));
        for (var i = 0; i < data.Devices.Count; i++)
        {
            var tensors = data.Devices[i] ?? throw new ArgumentException($"Device {i} has no tensor list.", nameof(data));
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (name, tensor) in tensors)
            {
                if (name is null)
                    throw new ArgumentException($"Device {i} has a tensor without a name.", nameof(data));
                if (!names.Add(name))
                    throw new ArgumentException($"Device {i} has two tensors named '{name}'.", nameof(data));
                if (tensor is null || tensor.IsInvalid)
                    throw new ArgumentException($"Tensor '{name}' of device {i} is null or disposed.", nameof(data));
                if (!s_dtypes.ContainsKey(tensor.dtype.ToString()))
                    throw new ArgumentException(
                        $"Tensor '{name}' of device {i} has dtype {tensor.dtype}; checkpoints support {string.Join(", ", s_dtypes.Keys)}.", nameof(data));
            }
        }
        foreach (var (key, value) in data.Metadata)
            if (value is null)
                throw new ArgumentException($"Metadata '{key}' has a null value.", nameof(data));
    }

    private static DeviceEntry WriteDeviceFile(string path, IReadOnlyList<(string Name, torch.Tensor Tensor)> tensors)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var entries = new List<TensorEntry>(tensors.Count);
        long offset = 0;
        using (var fs = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 16))
        {
            foreach (var (name, tensor) in tensors)
            {
                using var scope = torch.NewDisposeScope();   // frees the detached CPU copy and its views
                var flat = tensor.detach().cpu().contiguous().reshape(-1);
                var numel = flat.shape[0];
                var elementSize = flat.element_size();
                var perChunk = Math.Max(1, ChunkBytes / elementSize);
                for (long start = 0; start < numel; start += perChunk)
                {
                    // Tensor.bytes is a span over the tensor's own native memory: no per-element managed copy.
                    var span = flat.narrow(0, start, Math.Min(perChunk, numel - start)).bytes;
                    fs.Write(span);
                    hash.AppendData(span);
                }
                var length = numel * elementSize;
                entries.Add(new TensorEntry(name, tensor.dtype, tensor.shape, offset, length));
                offset += length;
            }
            fs.Flush(flushToDisk: true);
        }
        return new DeviceEntry(Path.GetFileName(path), offset, Convert.ToHexStringLower(hash.GetHashAndReset()), entries);
    }

    private static byte[] ManifestJson(CheckpointData data, List<DeviceEntry> devices)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("format", FormatName);
            w.WriteNumber("version", FormatVersion);
            w.WriteNumber("step", data.Step);
            w.WriteStartObject("metadata");
            foreach (var (key, value) in data.Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                w.WriteString(key, value);
            w.WriteEndObject();
            w.WriteStartArray("devices");
            foreach (var d in devices)
                WriteDevice(w, d);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return buffer.ToArray();
    }

    private static void WriteDevice(Utf8JsonWriter w, DeviceEntry d)
    {
        w.WriteStartObject();
        w.WriteString("file", d.File);
        w.WriteNumber("bytes", d.Bytes);
        w.WriteString("sha256", d.Sha256);
        w.WriteStartArray("tensors");
        foreach (var t in d.Tensors)
        {
            w.WriteStartObject();
            w.WriteString("name", t.Name);
            w.WriteString("dtype", t.Dtype.ToString());
            w.WriteStartArray("shape");
            foreach (var n in t.Shape)
                w.WriteNumberValue(n);
            w.WriteEndArray();
            w.WriteNumber("offset", t.Offset);
            w.WriteNumber("length", t.Length);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    private static void WriteAllBytesDurably(string path, byte[] bytes)
    {
        using var fs = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None);
        fs.Write(bytes);
        fs.Flush(flushToDisk: true);
    }

    private static void MoveIntoPlace(string dir, string tmp, string final, string name)
    {
        if (!Directory.Exists(final))
        {
            Directory.Move(tmp, final);
            return;
        }
        // A folder of this name from an earlier run (resumed from an older step): rename cannot replace a
        // non-empty folder, so move it aside under a .tmp- name (cleaned up later even if we crash here).
        var aside = Path.Combine(dir, $"{TempPrefix}replaced-{name}-{Guid.NewGuid():N}");
        Directory.Move(final, aside);
        try
        {
            Directory.Move(tmp, final);
        }
        catch
        {
            try { Directory.Move(aside, final); } catch (IOException) { } // best effort: put the old one back
            throw;
        }
        TryDelete(aside);
    }

    /// <summary>Of the checkpoints at or below <paramref name="step"/>, keeps the newest <paramref name="keep"/> complete ones.</summary>
    private static void Prune(string dir, long step, int keep)
    {
        var kept = 0;
        foreach (var (s, path) in Candidates(dir))
        {
            if (s > step)
                continue;   // not ours to judge: newer than what was just written
            if (kept < keep && (s == step || LooksComplete(path, s)))
            {
                kept++;
                continue;
            }
            TryDelete(path);
        }
    }

    /// <summary>Deletes <c>.tmp-*</c> entries last written before this save began: leftovers of crashed saves.</summary>
    private static void DeleteLeftovers(string dir, DateTime started)
    {
        foreach (var entry in new DirectoryInfo(dir).EnumerateFileSystemInfos(TempPrefix + "*"))
        {
            if (entry.LastWriteTimeUtc >= started)
                continue;   // possibly another save in progress right now
            TryDelete(entry.FullName);
        }
    }

    private static void TryDelete(string path)
    {
        // Pruning is housekeeping: failing to delete (a reader holding a file open on some systems) must not fail a save.
        try
        {
            if (Directory.Exists(path))
                Directory.Delete(path, recursive: true);
            else
                File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    // ---- loading ----

    private static CheckpointData LoadFolder(string path, long step, int? onlyDevice)
    {
        var manifest = ReadManifest(path, step);
        if (onlyDevice is int only && (only < 0 || only >= manifest.Devices.Count))
            throw new InvalidDataException($"it holds {manifest.Devices.Count} devices' shards, not device {only}'s.");
        foreach (var d in manifest.Devices)
        {
            var file = new FileInfo(Path.Combine(path, d.File));
            if (!file.Exists)
                throw new InvalidDataException($"{d.File} is missing.");
            if (file.Length != d.Bytes)
                throw new InvalidDataException($"{d.File} holds {file.Length} bytes; the manifest records {d.Bytes} (truncated or partial write).");
        }

        var created = new List<torch.Tensor>();
        try
        {
            var devices = new IReadOnlyList<(string Name, torch.Tensor Tensor)>[manifest.Devices.Count];
            for (var i = 0; i < devices.Length; i++)
            {
                if (onlyDevice is int o && o != i)
                {
                    devices[i] = [];
                    continue;
                }
                var d = manifest.Devices[i];
                var tensors = new (string Name, torch.Tensor Tensor)[d.Tensors.Count];
                using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                using (var fs = new FileStream(Path.Combine(path, d.File), FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1 << 16))
                {
                    for (var j = 0; j < tensors.Length; j++)
                    {
                        var t = d.Tensors[j];
                        var tensor = torch.empty(t.Shape, t.Dtype);
                        created.Add(tensor);
                        ReadInto(fs, hash, tensor);
                        tensors[j] = (t.Name, tensor);
                    }
                }
                var digest = Convert.ToHexStringLower(hash.GetHashAndReset());
                if (digest != d.Sha256)
                    throw new InvalidDataException($"{d.File} has SHA-256 {digest}; the manifest records {d.Sha256} (the file is corrupt).");
                devices[i] = tensors;
            }
            return new CheckpointData(step, devices, manifest.Metadata);
        }
        catch
        {
            foreach (var t in created)
                t.Dispose();
            throw;
        }
    }

    private static void ReadInto(FileStream fs, IncrementalHash hash, torch.Tensor tensor)
    {
        using var flat = tensor.reshape(-1);   // a view: reading into it fills the tensor
        var numel = flat.shape[0];
        var perChunk = Math.Max(1, ChunkBytes / flat.element_size());
        for (long start = 0; start < numel; start += perChunk)
        {
            using var part = flat.narrow(0, start, Math.Min(perChunk, numel - start));
            var span = part.bytes;
            fs.ReadExactly(span);
            hash.AppendData(span);
        }
    }

    private static bool LooksComplete(string path, long step)
    {
        // Cheap (no hashing): used for pruning, where reading every kept checkpoint back would cost a full read.
        try
        {
            var manifest = ReadManifest(path, step);
            return manifest.Devices.All(d => new FileInfo(Path.Combine(path, d.File)) is { Exists: true } f && f.Length == d.Bytes);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return false;
        }
    }

    private static Manifest ReadManifest(string path, long step)
    {
        var manifestPath = Path.Combine(path, ManifestFileName);
        if (!File.Exists(manifestPath))
            throw new InvalidDataException($"{ManifestFileName} is missing (an incomplete save).");
        using var doc = JsonDocument.Parse(File.ReadAllBytes(manifestPath));
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
            throw Bad("the root is not an object");
        if (Str(root, "format") != FormatName)
            throw Bad($"'format' is not \"{FormatName}\"");
        var version = Int(root, "version");
        if (version != FormatVersion)
            throw Bad($"format version {version} is not supported (this build reads version {FormatVersion})");
        var recordedStep = Int(root, "step");
        if (recordedStep != step)
            throw Bad($"it records step {recordedStep}, but the folder is for step {step}");

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var p in Prop(root, "metadata", JsonValueKind.Object).EnumerateObject())
            metadata[p.Name] = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : throw Bad($"metadata '{p.Name}' is not a string");

        var devices = new List<DeviceEntry>();
        foreach (var d in Prop(root, "devices", JsonValueKind.Array).EnumerateArray())
            devices.Add(ParseDevice(d, devices.Count));
        return new Manifest(devices, metadata);

    }

    /// <summary>One device's entry of a manifest (or of a shard's staging entry, see SaveShard), validated.</summary>
    private static DeviceEntry ParseDevice(JsonElement d, int index)
    {
        var file = Str(d, "file");
        var expectedFile = DeviceFileName(index);
        if (file != expectedFile)   // also keeps a tampered manifest from naming paths outside the folder
            throw Bad($"device {index} names file '{file}', expected '{expectedFile}'");
        var bytes = Int(d, "bytes");
        var sha = Str(d, "sha256");
        if (sha.Length != 64 || !sha.All(char.IsAsciiHexDigitLower))
            throw Bad($"device {index} has a malformed sha256");
        var tensors = new List<TensorEntry>();
        long offset = 0;
        foreach (var t in Prop(d, "tensors", JsonValueKind.Array).EnumerateArray())
        {
            var name = Str(t, "name");
            var dtypeName = Str(t, "dtype");
            if (!s_dtypes.TryGetValue(dtypeName, out var dtype))
                throw Bad($"tensor '{name}' has unsupported dtype '{dtypeName}'");
            var shape = Prop(t, "shape", JsonValueKind.Array).EnumerateArray().Select(e => e.GetInt64()).ToArray();
            long numel = 1;
            foreach (var n in shape)
                numel = n >= 0 ? checked(numel * n) : throw Bad($"tensor '{name}' has a negative dimension");
            var length = checked(numel * ElementSize(dtype));
            if (Int(t, "offset") != offset || Int(t, "length") != length)
                throw Bad($"tensor '{name}' has an offset or length inconsistent with its shape and position");
            tensors.Add(new TensorEntry(name, dtype, shape, offset, length));
            offset = checked(offset + length);
        }
        if (offset != bytes)
            throw Bad($"the tensors of {file} add up to {offset} bytes, but it records {bytes}");
        return new DeviceEntry(file, bytes, sha, tensors);
    }

    private static InvalidDataException Bad(string why) => new($"{ManifestFileName} is invalid: {why}.");

    private static JsonElement Prop(JsonElement obj, string name, JsonValueKind kind) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var v) && v.ValueKind == kind
            ? v
            : throw Bad($"'{name}' is missing or not of kind {kind}");

    private static string Str(JsonElement obj, string name) => Prop(obj, name, JsonValueKind.String).GetString()!;

    private static long Int(JsonElement obj, string name) =>
        Prop(obj, name, JsonValueKind.Number).TryGetInt64(out var v) ? v : throw Bad($"'{name}' is not an integer");

    private static long ElementSize(torch.ScalarType t) => t switch
    {
        torch.ScalarType.Byte or torch.ScalarType.Int8 or torch.ScalarType.Bool => 1,
        torch.ScalarType.Int16 or torch.ScalarType.Float16 or torch.ScalarType.BFloat16 => 2,
        torch.ScalarType.Int32 or torch.ScalarType.Float32 => 4,
        torch.ScalarType.Int64 or torch.ScalarType.Float64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, null),
    };

    private static IEnumerable<(long Step, string Path)> Candidates(string dir) =>
        new DirectoryInfo(dir).EnumerateDirectories(StepPrefix + "*")
            .Select(d => (Ok: TryParseStep(d.Name, out var s), Step: s, Path: d.FullName))
            .Where(c => c.Ok)
            .Select(c => (c.Step, c.Path))
            .OrderByDescending(c => c.Step)
            .ToList();

    private static bool TryParseStep(string folderName, out long step)
    {
        // Only canonical names (what FolderName writes), so step-7 and step-00000007 cannot both claim step 7.
        step = -1;
        return long.TryParse(folderName.AsSpan(StepPrefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out step)
            && folderName == FolderName(step);
    }

    private static string? ReadLatestHint(string dir)
    {
        try
        {
            var path = Path.Combine(dir, LatestFileName);
            return File.Exists(path) ? File.ReadAllText(path).Trim() : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string Reason(Exception e) => e switch
    {
        InvalidDataException => e.Message,
        JsonException => $"{ManifestFileName} is not valid JSON ({e.Message})",
        EndOfStreamException => $"a device file ended early ({e.Message})",
        _ => $"{e.GetType().Name}: {e.Message}",
    };

    private static string DeviceFileName(int device) => $"device-{device}.bin";

    private static void RequireLittleEndian()
    {
        // The files hold native tensor bytes; the format is defined as little-endian.
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("Checkpoints are little-endian; this machine is big-endian.");
    }

    private sealed record TensorEntry(string Name, torch.ScalarType Dtype, long[] Shape, long Offset, long Length);

    private sealed record DeviceEntry(string File, long Bytes, string Sha256, IReadOnlyList<TensorEntry> Tensors);

    private sealed record Manifest(IReadOnlyList<DeviceEntry> Devices, IReadOnlyDictionary<string, string> Metadata);

    /// <summary>
    /// Fault injection for the crash tests: with PALMC_FAILPOINT_CHECKPOINT_STEP=N and PALMC_FAILPOINT_CHECKPOINT_PAUSE_MS=T,
    /// saving step N pauses T ms after the data files are written and before the manifest, so a test can kill the
    /// process in the middle of a save. Unset, nothing happens.
    /// </summary>
    private static void FailPoint(long step)
    {
        if (Environment.GetEnvironmentVariable("PALMC_FAILPOINT_CHECKPOINT_STEP") is { } s && long.TryParse(s, out var at) && at == step
            && int.TryParse(Environment.GetEnvironmentVariable("PALMC_FAILPOINT_CHECKPOINT_PAUSE_MS"), out var ms))
            Thread.Sleep(ms);
    }
}
