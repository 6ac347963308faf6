using PaLM.CodeGen;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Spmd.Tests;

/// <summary>Runs a graph unpartitioned and partitioned on in-process virtual devices, and reassembles global results.</summary>
internal static class SpmdHarness
{
    public static IGraphProgram Compile(Graph g) => RoslynCompiler.CompileInMemory(Emitter.Emit(g));

    /// <summary>Global outputs of <paramref name="program"/> on every device of its mesh, reassembled from the pieces.</summary>
    public static Tensor[] RunGlobal(IGraphProgram program, long seed, Func<Tensor[]> globalInputs)
    {
        Rt.Initialize();
        var perDevice = InProcessMesh.Run(program.Mesh, device =>
        {
            using var scope = NewDisposeScope();
            var parameters = program.InitParameters(device, seed);
            var inputs = globalInputs().Select((t, i) => Rt.ShardOf(device, t, program.Inputs[i].DimAxes)).ToArray();
            var results = program.Forward(device, parameters, inputs);
            return (Device: device, Results: results.Select(r => r.to_type(ScalarType.Float64).detach().clone().MoveToOuterDisposeScope()).ToArray());
        });
        var outs = new Tensor[program.Outputs.Count];
        for (int o = 0; o < outs.Length; o++)
        {
            var spec = program.Outputs[o];
            var global = zeros(spec.Shape, ScalarType.Float64);
            foreach (var (device, results) in perDevice)
            {
                var piece = results[o];
                var view = global;
                for (int d = 0; d < spec.Shape.Length; d++)
                {
                    var axes = spec.DimAxes[d];
                    var len = piece.shape[d];
                    view = view.narrow(d, axes.Length == 0 ? 0 : device.ShardIndex(axes) * len, len);
                }
                view.copy_(piece);
            }
            outs[o] = global;
        }
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
