using PaLM.IR;

namespace PaLM.Passes;

/// <summary>
/// Per-device memory of a compiled training step by category, and the work rematerialization adds, read off the
/// partitioned program: parameters and optimizer state are the per-device arguments; gradients are each parameter's
/// gradient in its propagated layout; activations are what the forward pass keeps for the backward pass (the stacked
/// per-layer residuals the remat policy saves, plus top-level forward values the backward reads). Inputs are the
/// batch. Transient temporaries of one op are not counted (as in JAX's and PyTorch's activation-memory reports).
/// </summary>
public sealed record TrainingMemory(long Parameters, long OptimizerState, long Gradients, long Activations, long Inputs,
    long RecomputedFlopsPerStep, long ResidualsPerLayerBytes)
{
    public long Total => Parameters + OptimizerState + Gradients + Activations + Inputs;

    public IReadOnlyDictionary<string, long> ByCategory => new SortedDictionary<string, long>(StringComparer.Ordinal)
    {
        ["parameters"] = Parameters,
        ["optimizer_state"] = OptimizerState,
        ["gradients"] = Gradients,
        ["activations"] = Activations,
        ["inputs"] = Inputs,
    };

    public static TrainingMemory Of(CompiledTraining c)
    {
        var prop = c.Spmd.Propagation;
        var mesh = c.Spmd.Mesh;
        long Local(Value v) => prop.ShardingOf(v).LocalType(v.Type, mesh).Bytes;
        var local = c.Spmd.Local;
        var parameters = local.Args.Where(a => a.Kind == ArgKind.Parameter).Sum(a => a.Value.Type.Bytes);
        var state = local.Args.Where(a => a.Kind == ArgKind.State).Sum(a => a.Value.Type.Bytes);
        var inputs = local.Args.Where(a => a.Kind == ArgKind.Input).Sum(a => a.Value.Type.Bytes);
        var grads = c.Training.Gradients.Grads.Values.Sum(Local);
        var residuals = c.Training.Gradients.Residuals.Sum(Local);
        var topLevel = c.Training.Gradients.TopLevelSaved.Sum(Local);
        var perLayer = c.Training.Gradients.Residuals.Sum(v => Local(v) / Math.Max(1, v.Type.Dims[0].Size));
        var recomputed = c.Training.Gradients.Recomputed.Sum(r => checked(r.Node.Op.Flops(r.Node) * r.Trips));   // exact; overflows only past 9.2e18
        return new TrainingMemory(parameters, state, grads, residuals + topLevel, inputs, recomputed, perLayer);
    }
}
