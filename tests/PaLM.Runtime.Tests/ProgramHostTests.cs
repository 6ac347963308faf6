using System.Globalization;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

public sealed class ProgramHostTests
{
    public ProgramHostTests() => TestUtil.Init();

    /// <summary>A bigram model: loss = mean CE(embed[tokens]·embedᵀ, targets).</summary>
    private sealed class Bigram(bool named = true) : IGraphProgram
    {
        public string Name => "bigram";
        public IReadOnlyList<TensorSpec> Parameters { get; } =
            [new("embed", ScalarType.Float32, [13, 4], [named ? "vocab" : "v", "d"])];
        public IReadOnlyList<TensorSpec> Inputs { get; } =
        [
            new("tokens", ScalarType.Int32, [3, 6], ["batch", "seq"]),
            new("targets", ScalarType.Int64, [3, 6], ["batch", "seq"]),
        ];
        public IReadOnlyList<TensorSpec> Outputs { get; } =
            [new("loss", ScalarType.Float32, [], []), new("logits", ScalarType.Float32, [3, 6, 13], ["batch", "seq", "vocab"])];

        public MeshShape Mesh => MeshShape.Single;

        public Tensor[] InitParameters(DeviceContext device, long seed)
        {
            using var g = Rt.NewGenerator(seed);
            return [Rt.InitNormal(g, Parameters[0].Shape, 1.0, ScalarType.Float32)];
        }

        public Tensor[] Forward(DeviceContext device, Tensor[] parameters, Tensor[] inputs)
        {
            using var scope = Rt.Scope();
            Assert.Equal(ScalarType.Int64, inputs[1].dtype);
            var logits = Rt.Einsum("bsd,vd->bsv", Rt.Gather(parameters[0], inputs[0], 0), parameters[0]);
            var loss = Rt.Mean(Rt.CrossEntropy(logits, inputs[1], 2, 0), [0, 1]);
            return [Rt.Keep(loss), Rt.Keep(logits)];
        }
    }

    [Fact]
    public void PrintsTheLoss()
    {
        var output = new StringWriter();
        Assert.Equal(0, ProgramHost.RunLoss(new Bigram(), seed: 4, output));

        // The same computation by hand: parameters from seed 4, batch from seed 5.
        using var scope = Rt.Scope();
        var p = new Bigram();
        var embed = ((IGraphProgram)p).InitParameters(4)[0];
        var (tokens, targets) = Batches.Random(5, 3, 6, 13);
        var logits = embed.index_select(0, tokens.reshape(-1).to_type(ScalarType.Int64)).matmul(embed.t());
        var expected = nn.functional.cross_entropy(logits, targets.reshape(-1).to_type(ScalarType.Int64)).item<float>();
        Assert.Equal($"loss = {expected.ToString("F6", CultureInfo.InvariantCulture)}{Environment.NewLine}", output.ToString());
    }

    [Fact]
    public void ExplainsAMissingVocabDim()
    {
        var e = Assert.Throws<InvalidOperationException>(() => ProgramHost.RunLoss(new Bigram(named: false), 0, TextWriter.Null));
        Assert.Contains("vocab", e.Message);
    }
}
