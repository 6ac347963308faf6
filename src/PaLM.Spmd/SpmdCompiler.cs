using System.Diagnostics;
using PaLM.IR;

namespace PaLM.Spmd;

/// <summary>A graph compiled for a mesh: the source, the propagated shardings, the per-device graph and its collectives.</summary>
public sealed class SpmdProgram
{
    internal SpmdProgram(Graph source, Mesh mesh, Propagation propagation, Graph local, IReadOnlyList<CollectiveRecord> collectives,
        TimeSpan propagateTime, TimeSpan partitionTime)
    {
        Source = source;
        Mesh = mesh;
        Propagation = propagation;
        Local = local;
        Collectives = collectives;
        PropagateTime = propagateTime;
        PartitionTime = partitionTime;
    }

    public Graph Source { get; }
    public Mesh Mesh { get; }
    public Propagation Propagation { get; }

    /// <summary>The program every device runs (SPMD): local shapes, explicit collectives, verified.</summary>
    public Graph Local { get; }

    public IReadOnlyList<CollectiveRecord> Collectives { get; }
    public TimeSpan PropagateTime { get; }
    public TimeSpan PartitionTime { get; }
}

/// <summary>Entry point of the SPMD stage: propagate the annotations over the mesh, then partition.</summary>
public static class SpmdCompiler
{
    /// <summary>
    /// The mesh <paramref name="g"/> is compiled for: its own, or <paramref name="meshOverride"/> with declared axes it
    /// leaves out at size 1. An override naming an axis the graph does not declare is refused.
    /// </summary>
    public static Mesh ResolveMesh(Graph g, Mesh? meshOverride)
    {
        var declared = g.Mesh ?? new Mesh([]);
        // An axis the graph does not declare cannot be named by any annotation: it would only multiply the devices
        // (replicating everything over it), which is almost always a typo.
        if (meshOverride?.Axes.FirstOrDefault(a => !declared.HasAxis(a.Name)) is { Name: not null } extra)
            throw new ShardingException(
                $"mesh axis '{extra.Name}' is not declared in {g.Name}'s mesh ({(declared.Axes.IsEmpty ? "none" : string.Join(", ", declared.Axes.Select(a => a.Name)))}); " +
                "an override can only resize declared axes");
        return meshOverride is null ? declared : declared.OverriddenBy(meshOverride);
    }

    /// <summary>
    /// Compiles <paramref name="g"/> for its mesh, or for <paramref name="meshOverride"/> (axes the graph declares but
    /// the override leaves out get size 1). Throws <see cref="ShardingException"/> for annotations the mesh cannot take.
    /// </summary>
    public static SpmdProgram Compile(Graph g, Mesh? meshOverride = null)
    {
        var mesh = ResolveMesh(g, meshOverride);
        var sw = Stopwatch.StartNew();
        var prop = Propagation.Run(g, mesh);
        var propagateTime = sw.Elapsed;
        sw.Restart();
        var (local, collectives) = Partitioner.Run(g, mesh, prop);
        return new SpmdProgram(g, mesh, prop, local, collectives, propagateTime, sw.Elapsed);
    }
}
