using System.Collections.Immutable;
using System.Diagnostics;
using PaLM.IR;
using PaLM.Spmd;

namespace PaLM.Passes;

/// <summary>How to compile a training step.</summary>
public sealed record TrainingConfig
{
    public RematPolicy Remat { get; init; } = RematPolicy.None;

    /// <summary>Layer-group split and policies of <c>--remat auto</c> (null: <see cref="Remat"/> everywhere).</summary>
    public AutoRemat.Choice? Auto { get; init; }

    /// <summary>Run the parallel-layer fusion pass on the per-device program.</summary>
    public bool Fuse { get; init; } = true;

    public TrainOptions Optimizer { get; init; } = new();

    /// <summary>Let causal attention's einsums skip the blocks above the diagonal (<see cref="PaLM.Passes.CausalBlocks"/>).</summary>
    public bool CausalBlocks { get; init; } = true;

    /// <summary>Fuse attention's softmax and its gradient into the causal products that feed them
    /// (<see cref="PaLM.Passes.AttentionEpilogues"/>; needs <see cref="CausalBlocks"/>).</summary>
    public bool AttentionEpilogues { get; init; } = true;

    /// <summary>Move power-of-two scales of einsum results onto their smallest operand before autodiff
    /// (<see cref="PaLM.Passes.ScaleHoisting"/>; exact, so off only to compare).</summary>
    public bool HoistScales { get; init; } = true;
}

/// <summary>A compiled training step: the global training graph, its per-device program, and the phase times.</summary>
public sealed class CompiledTraining
{
    public required TrainingGraph Training { get; init; }
    public required SpmdProgram Spmd { get; init; }

    /// <summary>The program every device runs: <see cref="SpmdProgram.Local"/> after the local passes (fusion).</summary>
    public required Graph Local { get; init; }

    public FusionReport? Fusion { get; init; }

    /// <summary>The remat policy as chosen: a policy name, or auto's per-layer-group choice.</summary>
    public required string RematName { get; init; }
    public required TimeSpan AutodiffTime { get; init; }
    public required TimeSpan PassesTime { get; init; }
}

/// <summary>
/// The training pipeline after the front end: scales hoisted onto einsum operands, then the training step (autodiff
/// with the remat policy, loss, optimizer) on the global graph, then propagation and partitioning over the mesh, then the passes that work on the per-device
/// program (parallel-layer fusion, sums of squares without their squared temporaries, the causal softmax in one pass, attention's einsums over the causal triangle). Every stage's output is verified.
/// </summary>
public static class TrainingCompiler
{
    public static CompiledTraining Compile(Graph forward, Mesh? meshOverride, TrainingConfig config)
    {
        var sw = Stopwatch.StartNew();
        var regrouped = 0;
        if (config.Auto is { } auto) forward = AutoRemat.SplitLayers(forward, auto.FirstGroup);
        if (config.Fuse) (forward, regrouped) = ParallelFusion.Reassociate(forward);
        if (config.HoistScales) (forward, _) = ScaleHoisting.Run(forward);
        var fullySharded = config.Remat.FullyShardedResiduals || config.Auto is { } a && (a.First.FullyShardedResiduals || a.Second.FullyShardedResiduals);
        Func<Value, Sharding?>? residualSharding = fullySharded ? FullySharded(forward, meshOverride) : null;
        var training = TrainStep.Build(forward, config.Optimizer, config.Remat, residualSharding,
            config.Auto is { } c ? (c.FirstGroup == 0 ? [c.Second] : [c.First, c.Second]) : null);
        var autodiff = sw.Elapsed;
        var spmd = SpmdCompiler.Compile(training.Graph, meshOverride);
        sw.Restart();
        var local = spmd.Local;
        FusionReport? fusion = null;
        if (config.Fuse)
        {
            (local, fusion) = ParallelFusion.Run(local);
            fusion = fusion with { Reassociated = regrouped };
        }
        (local, _) = SquareReductions.Run(local);
        (local, _) = CausalSoftmax.Run(local);
        if (config.CausalBlocks)
        {
            (local, _) = CausalBlocks.Run(local);
            if (config.AttentionEpilogues) (local, _) = AttentionEpilogues.Run(local);
        }
        return new CompiledTraining { RematName = config.Auto?.ToString() ?? config.Remat.Name, Training = training, Spmd = spmd, Local = local, Fusion = fusion, AutodiffTime = autodiff, PassesTime = sw.Elapsed };
    }

    /// <summary>
    /// For policy palm: the layout each saved layer input is pinned to, its propagated layout in the forward graph with
    /// every mesh axis it does not use added to the first dim that divides evenly (fully sharded, as PaLM 540B kept it).
    /// </summary>
    public static Func<Value, Sharding?> FullySharded(Graph forward, Mesh? meshOverride)
    {
        var mesh = SpmdCompiler.ResolveMesh(forward, meshOverride);
        var prop = Propagation.Run(forward, mesh);
        return v =>
        {
            var s = prop.ShardingOf(v);
            var used = s.AllAxes.ToHashSet();
            var dims = s.DimAxes.ToArray();
            foreach (var axis in mesh.Axes.Where(a => a.Size > 1 && !used.Contains(a.Name)))
            {
                for (int d = 0; d < dims.Length; d++)
                {
                    var shards = mesh.Product(dims[d]) * axis.Size;
                    if (v.Type.Dims[d].Size % shards != 0) continue;
                    dims[d] = dims[d].Add(axis.Name);
                    break;
                }
            }
            return new Sharding([.. dims]);
        };
    }
}
