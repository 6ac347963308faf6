using System.Text.Json;
using PaLM.Runtime.Training;
using static TorchSharp.torch;
using static PaLM.Runtime.Tests.TestUtil;

namespace PaLM.Runtime.Tests;

public sealed class CheckpointTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "palmc-ckpt-" + Guid.NewGuid().ToString("N"));

    public CheckpointTests() => Init();

    public void Dispose()
    {
        if (Directory.Exists(_root))
            Directory.Delete(_root, recursive: true);
    }

    [Fact]
    public void RoundTripIsBitExactAcrossDtypesShapesAndDevices()
    {
        using var scope = Rt.Scope();
        var nan = full([3], float.NaN, ScalarType.Float32);
        var device0 = new List<(string, Tensor)>
        {
            ("w", Randn(1, 3, 5)),
            ("w.T (non-contiguous)", Randn(2, 4, 6).t()),
            ("bf16", Randn(3, 7, 2).to_type(ScalarType.BFloat16)),
            ("f64", Randn(4, 2, 2, 3).to_type(ScalarType.Float64)),
            ("nan and -0", cat([nan, tensor(new[] { -0.0f, float.PositiveInfinity })])),
            ("scalar", tensor(3.25)),
            ("empty", zeros([0, 4])),
        };
        var device1 = new List<(string, Tensor)>
        {
            ("w", Randn(5, 3, 5)),
            ("i32", arange(-50, 50, dtype: ScalarType.Int32).reshape(10, 10)),
            ("i64", tensor(new[] { long.MinValue, -1L, 0L, long.MaxValue })),
            ("mask", tensor(new[] { true, false, true })),
        };
        var meta = new Dictionary<string, string> { ["model"] = "palm-8m", ["note"] = "ünïcode \"quoted\"\n", ["empty"] = "" };
        var path = Checkpoint.Save(_root, Data(12, meta, device0, device1));
        Assert.Equal(Path.Combine(_root, "step-00000012"), path);
        Assert.Equal("step-00000012", File.ReadAllText(Path.Combine(_root, "latest")).Trim());
        Assert.True(File.Exists(Path.Combine(path, "device-0.bin")) && File.Exists(Path.Combine(path, "device-1.bin")));

        var warnings = new List<string>();
        var loaded = Checkpoint.LoadLatest(_root, warnings.Add);
        Assert.NotNull(loaded);
        Assert.Empty(warnings);
        Assert.Equal(12, loaded.Step);
        Assert.Equal(meta, loaded.Metadata);
        Assert.Equal(2, loaded.Devices.Count);
        AssertSame(device0, loaded.Devices[0]);
        AssertSame(device1, loaded.Devices[1]);

        // The manifest records what it says it records.
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(path, "manifest.json")));
        var t0 = doc.RootElement.GetProperty("devices")[0].GetProperty("tensors")[2];
        Assert.Equal("BFloat16", t0.GetProperty("dtype").GetString());
        Assert.Equal(7 * 2 * 2, t0.GetProperty("length").GetInt64());
    }

    [Fact]
    public void LoadLatestPicksTheNewestStep()
    {
        Assert.Null(Checkpoint.LoadLatest(_root));                       // no folder yet
        foreach (var step in new long[] { 5, 100, 20 })
            SaveSimple(step);
        var loaded = Checkpoint.LoadLatest(_root);
        Assert.Equal(100, loaded!.Step);
        Assert.Equal(100f, loaded.Devices[0][0].Tensor.item<float>());
    }

    [Theory]
    [InlineData("truncate")]
    [InlineData("flip")]
    [InlineData("manifest")]
    [InlineData("missing")]
    public void CorruptNewestIsSkippedWithAWarning(string damage)
    {
        SaveSimple(1, elements: 1000);
        var newest = SaveSimple(2, elements: 1000);
        var file = Path.Combine(newest, "device-1.bin");
        switch (damage)
        {
            case "truncate":
                using (var fs = new FileStream(file, FileMode.Open))
                    fs.SetLength(fs.Length - 1);
                break;
            case "flip":
                var bytes = File.ReadAllBytes(file);
                bytes[bytes.Length / 2] ^= 0x10;
                File.WriteAllBytes(file, bytes);
                break;
            case "manifest":
                File.WriteAllText(Path.Combine(newest, "manifest.json"), "{ \"format\": ");
                break;
            case "missing":
                File.Delete(file);
                break;
        }

        var warnings = new List<string>();
        var loaded = Checkpoint.LoadLatest(_root, warnings.Add);
        Assert.Equal(1, loaded!.Step);
        Assert.Equal(1f, loaded.Devices[1][0].Tensor[0].item<float>());
        Assert.Contains(warnings, w => w.Contains("step-00000002") && w.Contains(damage switch
        {
            "truncate" => "truncated",
            "flip" => "SHA-256",
            "manifest" => "JSON",
            _ => "missing",
        }));
    }

    [Fact]
    public void LeftoverTempFolderFromACrashIsIgnoredAndCleanedUp()
    {
        SaveSimple(10);
        // A save of step 20 that crashed after writing part of its data: no manifest, never renamed.
        var crashed = Path.Combine(_root, ".tmp-step-20-0123456789abcdef0123456789abcdef");
        Directory.CreateDirectory(crashed);
        File.WriteAllBytes(Path.Combine(crashed, "device-0.bin"), new byte[100]);
        var warnings = new List<string>();
        Assert.Equal(10, Checkpoint.LoadLatest(_root, warnings.Add)!.Step);
        Assert.Empty(warnings);

        SaveSimple(11);
        Assert.False(Directory.Exists(crashed));
        Assert.Empty(Directory.GetFileSystemEntries(_root, ".tmp-*"));
    }

    [Fact]
    public void KeepPrunesOlderCheckpoints()
    {
        for (long step = 1; step <= 5; step++)
            SaveSimple(step, keep: 2);
        Assert.Equal(["step-00000004", "step-00000005"], StepFolders());
        SaveSimple(6, keep: 3);
        Assert.Equal(["step-00000004", "step-00000005", "step-00000006"], StepFolders());
        SaveSimple(7, keep: 1);
        Assert.Equal(["step-00000007"], StepFolders());
    }

    [Fact]
    public void PruningSkipsIncompleteCheckpointsWhenCounting()
    {
        SaveSimple(1);
        SaveSimple(2);
        var broken = SaveSimple(3);
        File.Delete(Path.Combine(broken, "manifest.json"));
        SaveSimple(4, keep: 3);
        // Step 3 has no manifest, so it does not count among the three kept (4, 2, 1) and is deleted.
        Assert.Equal(["step-00000001", "step-00000002", "step-00000004"], StepFolders());
    }

    [Fact]
    public void ResavingAnExistingStepReplacesIt()
    {
        SaveSimple(3);
        SaveSimple(3, value: 42f);
        var loaded = Checkpoint.LoadLatest(_root);
        Assert.Equal(42f, loaded!.Devices[0][0].Tensor.item<float>());
        Assert.Equal(["step-00000003"], StepFolders());
        Assert.Empty(Directory.GetFileSystemEntries(_root, ".tmp-*"));
    }

    [Fact]
    public void LatestPointingAtAMissingFolderIsHarmless()
    {
        SaveSimple(8);
        File.WriteAllText(Path.Combine(_root, "latest"), "step-00000099\n");
        var warnings = new List<string>();
        Assert.Equal(8, Checkpoint.LoadLatest(_root, warnings.Add)!.Step);
        Assert.Contains(warnings, w => w.Contains("step-00000099"));
        SaveSimple(9);
        Assert.Equal("step-00000009", File.ReadAllText(Path.Combine(_root, "latest")).Trim());
    }

    [Fact]
    public void SaveIntoANewNestedFolder()
    {
        var nested = Path.Combine(_root, "a", "b", "c");
        using var scope = Rt.Scope();
        var path = Checkpoint.Save(nested, Data(0, new Dictionary<string, string>(), [("x", ones(2, 2))]));
        Assert.Equal(Path.Combine(nested, "step-00000000"), path);
        var loaded = Checkpoint.LoadLatest(nested);
        Assert.Equal(0, loaded!.Step);
        Assert.Equal([1f, 1f, 1f, 1f], Values(loaded.Devices[0][0].Tensor));
    }

    [Fact]
    public void InvalidInputIsRejected()
    {
        using var scope = Rt.Scope();
        var empty = new Dictionary<string, string>();
        Assert.Throws<ArgumentOutOfRangeException>(() => Checkpoint.Save(_root, Data(-1, empty, [("x", ones(1))])));
        Assert.Throws<ArgumentOutOfRangeException>(() => Checkpoint.Save(_root, Data(1, empty, [("x", ones(1))]), keep: 0));
        Assert.Contains("'x'", Assert.Throws<ArgumentException>(() => Checkpoint.Save(_root, Data(1, empty, [("x", ones(1)), ("x", ones(1))]))).Message);
        Assert.Throws<ArgumentException>(() => Checkpoint.Save(_root, Data(1, empty, [("c", ones(1).to_type(ScalarType.ComplexFloat32))])));
        Assert.Empty(StepFolders());
    }

    private string SaveSimple(long step, int keep = 3, float? value = null, int elements = 1)
    {
        using var scope = Rt.Scope();
        var v = value ?? step;
        return Checkpoint.Save(_root, Data(step, new Dictionary<string, string> { ["step"] = step.ToString() },
            [("p", full([elements], v))], [("p", full([elements], v))]), keep);
    }

    private string[] StepFolders() =>
        Directory.Exists(_root)
            ? Directory.GetDirectories(_root, "step-*").Select(d => Path.GetFileName(d)).Order(StringComparer.Ordinal).ToArray()
            : [];

    private static CheckpointData Data(long step, Dictionary<string, string> meta, params List<(string, Tensor)>[] devices) =>
        new(step, devices.Select(d => (IReadOnlyList<(string Name, Tensor Tensor)>)d).ToList(), meta);

    private static void AssertSame(List<(string, Tensor)> expected, IReadOnlyList<(string Name, Tensor Tensor)> actual)
    {
        Assert.Equal(expected.Select(e => e.Item1), actual.Select(a => a.Name));
        for (var i = 0; i < expected.Count; i++)
        {
            var (name, e) = expected[i];
            var a = actual[i].Tensor;
            Assert.Equal(e.dtype, a.dtype);
            Assert.Equal(e.shape, a.shape);
            Assert.True(a.is_contiguous(), name);
            Assert.True(e.contiguous().bytes.SequenceEqual(a.bytes), $"bytes of '{name}' differ");
        }
    }
}
