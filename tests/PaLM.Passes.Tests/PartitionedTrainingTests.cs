using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using PaLM.Runtime.Training;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>
/// The compiled training step partitioned over meshes 2x1, 1x2, 2x2 and 4x2 (data x model) leaves the same parameters
/// after 5 steps as the single-device step without fusion or remat (fp32, 1e-4 normwise relative), with and without
/// fusion, under every remat policy. Parameters are read back from the checkpoint each run writes (every device's
/// shards) and reassembled into global tensors.
/// </summary>
public sealed class PartitionedTrainingTests
{
    private const int Steps = 5;

    private static readonly Lazy<Graph> s_tiny = new(() => Frontend.CompileFile(TestPaths.Graph("palm-tiny")));

    private static readonly Lazy<Dictionary<string, Tensor>> s_single = new(() => Train(null, RematPolicy.None, fuse: false).Params);

    public static TheoryData<string, string, bool> Configs()
    {
        var data = new TheoryData<string, string, bool>();
        foreach (var mesh in new[] { "data=2,model=1", "data=1,model=2", "data=2,model=2", "data=4,model=2" })
            foreach (var remat in new[] { "none", "full", "dots", "palm" })
                foreach (var fuse in new[] { false, true })
                    data.Add(mesh, remat, fuse);
        data.Add("data=1,model=1", "full", true);
        return data;
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public void SameParametersAsSingleDevice(string mesh, string remat, bool fuse)
    {
        var (got, losses) = Train(Mesh.Parse(mesh), RematPolicy.Parse(remat), fuse);
        Assert.True(losses[^1] < losses[0], $"loss did not fall: {string.Join(", ", losses)}");
        foreach (var (name, expected) in s_single.Value)
        {
            var err = TestMath.RelErr(got[name], expected);
            Assert.True(err < 1e-4, $"{mesh} remat={remat} fuse={fuse}: parameter {name} differs after {Steps} steps by {err:E2}");
        }
    }

    /// <summary>remat auto's mixed plan: the layer loop split in two groups under different policies.</summary>
    [Theory]
    [InlineData("data=2,model=2", "none", "full", true)]
    [InlineData("data=4,model=2", "dots", "palm", false)]
    public void MixedPerLayerPoliciesGiveTheSameParameters(string mesh, string first, string second, bool fuse)
    {
        var choice = new AutoRemat.Choice(1, RematPolicy.Parse(first), RematPolicy.Parse(second), 2);
        var (got, _) = Train(Mesh.Parse(mesh), RematPolicy.None, fuse, choice);
        foreach (var (name, expected) in s_single.Value)
        {
            var err = TestMath.RelErr(got[name], expected);
            Assert.True(err < 1e-4, $"{mesh} {choice}: parameter {name} differs after {Steps} steps by {err:E2}");
        }
    }

    /// <summary>
    /// A stop decided on device 0 mid-run (how `palmc bench` ends its warm-up) reaches every device of the mesh: they all
    /// stop after that step, the result says so, and the last step is checkpointed with the same parameters as a run
    /// of exactly that many steps.
    /// </summary>
    [Fact]
    public void StopAfterEndsEveryDeviceAtTheSameStep()
    {
        var compiled = TrainingCompiler.Compile(s_tiny.Value, Mesh.Parse("data=2,model=2"), new TrainingConfig());
        var program = RoslynCompiler.CompileInMemory(Emitter.Emit(compiled.Local));
        var corpus = ByteCorpus.FromBytes("test", System.Text.Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat("the quick brown fox jumps over the lazy dog. ", 40))));
        var stopped = Directory.CreateTempSubdirectory("palm-stop-");
        var exact = Directory.CreateTempSubdirectory("palm-stop-");
        try
        {
            var asked = new List<long>();
            var result = Trainer.Run(program, new TrainerOptions
            {
                Steps = 50, Corpus = corpus, Seed = 3, CheckpointDir = stopped.FullName, CheckpointEvery = 100,
                StopAfter = step => { asked.Add(step); return step == 3; },
            });
            Assert.Equal([1L, 2, 3], asked);
            Assert.Equal(3, result.LastStep);
            Assert.Equal([1L, 2, 3], result.Steps.Select(s => s.Step));
            Trainer.Run(program, new TrainerOptions { Steps = 3, Corpus = corpus, Seed = 3, CheckpointDir = exact.FullName, CheckpointEvery = 100 });
            var a = Checkpoint.LoadLatest(stopped.FullName)!;
            var b = Checkpoint.LoadLatest(exact.FullName)!;
            Assert.Equal(3, a.Step);
            for (int rank = 0; rank < 4; rank++)
                foreach (var ((name, x), (_, y)) in a.Devices[rank].Zip(b.Devices[rank]))
                    Assert.True(x.shape.SequenceEqual(y.shape) && x.eq(y).all().item<bool>(), $"device {rank}: {name} differs");
        }
        finally
        {
            stopped.Delete(true);
            exact.Delete(true);
        }
    }

    internal static (Dictionary<string, Tensor> Params, double[] Losses) Train(Mesh? mesh, RematPolicy remat, bool fuse, AutoRemat.Choice? auto = null)
    {
        var compiled = TrainingCompiler.Compile(s_tiny.Value, mesh, new TrainingConfig { Remat = remat, Fuse = fuse, Auto = auto });
        if (auto is not null) Assert.Equal(2, compiled.Local.Body.Nodes.Count(n => n.Op.HasRegion && !ControlOps.IsReverse(n)));
        var program = RoslynCompiler.CompileInMemory(Emitter.Emit(compiled.Local));
        var dir = Directory.CreateTempSubdirectory("palm-train-");
        try
        {
            var corpus = ByteCorpus.FromBytes("test", System.Text.Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat("the quick brown fox jumps over the lazy dog. ", 40))));
            var result = Trainer.Run(program, new TrainerOptions { Steps = Steps, Corpus = corpus, Seed = 3, CheckpointDir = dir.FullName, CheckpointEvery = Steps });
            var ckpt = Checkpoint.LoadLatest(dir.FullName)!;
            return (Reassemble(program, ckpt), result.Steps.Select(s => s.Loss).ToArray());
        }
        finally { dir.Delete(true); }
    }

    /// <summary>Global parameter tensors from every device's shards (replicated pieces must agree bitwise).</summary>
    private static Dictionary<string, Tensor> Reassemble(IGraphProgram program, CheckpointData ckpt)
    {
        var result = new Dictionary<string, Tensor>();
        for (int i = 0; i < program.Parameters.Count; i++)
        {
            var spec = program.Parameters[i];
            if (spec.Role != TensorRole.Parameter) continue;
            var global = full(spec.Shape, double.NaN, ScalarType.Float64);
            for (int rank = 0; rank < ckpt.Devices.Count; rank++)
            {
                var piece = ckpt.Devices[rank].First(t => t.Name == spec.Name).Tensor;
                var view = global;
                for (int d = 0; d < spec.Shape.Length; d++)
                {
                    var axes = spec.DimAxes[d];
                    var len = piece.shape[d];
                    view = view.narrow(d, axes.Length == 0 ? 0 : program.Mesh.GroupIndex(rank, axes) * len, len);
                }
                view.copy_(piece.to_type(ScalarType.Float64));
            }
            Assert.False(global.isnan().any().item<bool>(), $"{spec.Name}: some element was held by no device");
            result[spec.Name] = global;
        }
        return result;
    }
}
