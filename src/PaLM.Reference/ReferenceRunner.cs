using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Reference;

/// <summary>Runs the eager reference on exactly the weights and batch a compiled program uses.</summary>
public static class ReferenceRunner
{
    /// <summary>The reference configuration matching a compiled PaLM program, or null if its parameters are not PaLM's.</summary>
    public static PalmConfig? ConfigFrom(IGraphProgram program)
    {
        var specs = program.Parameters.ToDictionary(p => p.Name);
        if (!PalmModel.WeightNames.All(specs.ContainsKey)) return null;
        var embed = specs["embed"].Shape;
        var wq = specs["w_q"].Shape;
        var gate = specs["w_gate"].Shape;
        if (embed.Length != 2 || wq.Length != 4 || gate.Length != 3) return null;
        var config = new PalmConfig(Vocab: embed[0], DModel: embed[1], Heads: wq[2], HeadDim: wq[3], DFF: gate[2], Layers: wq[0]);
        var expected = PalmModel.Shapes(config).ToDictionary(s => s.Name, s => s.Shape);
        return expected.All(e => specs[e.Key].Shape.SequenceEqual(e.Value)) ? config : null;
    }

    /// <summary>
    /// The reference loss with the program's initial parameters from <paramref name="seed"/> (on a mesh, the whole tensors
    /// its devices' pieces are cut from) and its batch from seed + 1.
    /// </summary>
    public static double Loss(IGraphProgram program, PalmConfig config, long seed)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var init = Shards.InitWhole(program, seed);
        var weights = program.Parameters.Select((p, i) => (p.Name, init[i])).ToDictionary(p => p.Name, p => p.Item2);
        using var model = new PalmModel(config, weights);
        var tokensSpec = program.Inputs.First(i => i.Name == "tokens");
        var (tokens, targets) = Batches.Random(seed + 1, tokensSpec.Shape[0], tokensSpec.Shape[1], config.Vocab);
        using var noGrad = no_grad();
        return model.Loss(tokens, targets).to_type(ScalarType.Float64).item<double>();
    }
}
