using PaLM.CodeGen;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Spmd.Tests;

/// <summary>Runs a graph unpartitioned and partitioned on in-process virtual devices, and reassembles global results.</summary>
internal static class SpmdHarness
{
    public static IGraphProgram Compile(Graph g) => RoslynCompiler.CompileInMemory(Emitter.Emit(g));

    /// <summary>Global outputs of <paramref name="program"/> on every device of its mesh, reassembled from the pieces (<see cref="Shards.Assemble"/>).</summary>
    public static Tensor[] RunGlobal(IGraphProgram program, long seed, Func<Tensor[]> globalInputs)
    {
        Rt.Initialize();
        var perDevice = InProcessMesh.Run(program.Mesh, device =>
        {
            using var scope = NewDisposeScope();
            var parameters = program.InitParameters(device, seed);
            var inputs = globalInputs().Select((t, i) => Rt.ShardOf(device, t, program.Inputs[i].DimAxes)).ToArray();
            var results = program.Forward(device, parameters, inputs);
            return results.Select(r => r.to_type(ScalarType.Float64).detach().clone().MoveToOuterDisposeScope()).ToArray();
        });
        var outs = new Tensor[program.Outputs.Count];
        for (int o = 0; o < outs.Length; o++)
            outs[o] = Shards.Assemble(program.Mesh, program.Outputs[o], perDevice.Select(d => d[o]).ToArray());
        return outs;
    }

    /// <summary>
    /// Normwise relative error max|a - b| / max|b| over finite entries; infinities must match exactly (masked scores).
    /// </summary>
    public static double RelErr(Tensor a, Tensor b)
    {
        var finite = b.isfinite();
        var inf = finite.logical_not();
        if (!a.isfinite().eq(finite).all().item<bool>() || !a.masked_select(inf).eq(b.masked_select(inf)).all().item<bool>())
            return double.PositiveInfinity;
        var diff = (a - b).masked_select(finite).abs();
        return diff.numel() == 0 ? 0 : diff.max().item<double>() / (b.masked_select(finite).abs().max().item<double>() + 1e-30);
    }
}
