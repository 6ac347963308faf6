using System.Collections.Immutable;
using System.Diagnostics;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Spmd;

namespace PaLM.Sim;

/// <summary>
/// How parameters (and so their optimizer state) are laid out over the mesh. The batch axes are those the batch
/// input is split over (pod and data in PaLM's graphs); the others are model axes.
/// </summary>
public enum ParameterLayout
{
    /// <summary>The annotations as written (PaLM's graphs: "2D finalized", every weight over data and model).</summary>
    AsWritten,

    /// <summary>Batch axes dropped from every parameter: weights replicated over data (Megatron-style tensor parallelism; pure data parallelism when the model axes have size 1).</summary>
    ReplicatedOverBatch,

    /// <summary>Every batch axis that splits a weight also brings the axes outside it (pods): weights sharded across pods too (FSDP over the whole cluster).</summary>
    ShardedAcrossPods,
}

/// <summary>The one table of layout names: the CLI's spelling and the phrase reports use.</summary>
public static class ParameterLayouts
{
    private static readonly (ParameterLayout Layout, string Name, string Phrase)[] s_table =
    [
        (ParameterLayout.AsWritten, "as-written", "weights as written"),
        (ParameterLayout.ReplicatedOverBatch, "replicated", "weights replicated over batch axes"),
        (ParameterLayout.ShardedAcrossPods, "across-pods", "weights sharded across pods"),
    ];

    /// <summary><c>as-written</c>, <c>replicated</c>, <c>across-pods</c>.</summary>
    public static string Name(ParameterLayout l) => s_table.First(x => x.Layout == l).Name;

    /// <summary>"weights as written", ...</summary>
    public static string Phrase(ParameterLayout l) => s_table.First(x => x.Layout == l).Phrase;

    public static IEnumerable<string> Names => s_table.Select(x => x.Name);

    /// <summary>The layout called <paramref name="name"/>, or null.</summary>
    public static ParameterLayout? Parse(string name) => s_table.Where(x => x.Name == name).Select(x => (ParameterLayout?)x.Layout).FirstOrDefault();
}

/// <summary>
/// Which mesh axis plays which part in a graph: the batch input's axes (outermost first: pods, then data) and the first
/// other axis (model). The search and the sweep build meshes from it.
/// </summary>
public sealed record MeshRoles(Mesh Declared, string? Pod, string Data, string? Model)
{
    public static MeshRoles Of(Graph g)
    {
        var declared = g.Mesh ?? throw new SimulationException($"{g.Name} declares no mesh");
        var batch = Simulator.BatchAxes(g);
        if (batch.IsEmpty) throw new SimulationException($"{g.Name}: the batch input is not split over any mesh axis, so there is no data axis");
        return new MeshRoles(declared, batch.Length > 1 ? batch[0] : null, batch[^1], declared.Axes.Select(a => a.Name).FirstOrDefault(a => !batch.Contains(a)));
    }

    /// <summary>The graph's model-axis size (1 without a model axis).</summary>
    public long ModelSize => Model is null ? 1 : Declared.SizeOf(Model);

    /// <summary>The declared axes resized: <paramref name="pod"/>, <paramref name="data"/>, <paramref name="model"/>, every other axis 1.</summary>
    public Mesh Build(long pod, long data, long model) => new([.. Declared.Axes.Select(a => new MeshAxis(a.Name,
        a.Name == Pod ? pod : a.Name == Data ? data : a.Name == Model ? model : 1))]);
}

/// <summary>What to simulate: a model, a mesh on a hardware kind, a remat policy and a parameter layout.</summary>
public sealed record SimulationConfig
{
    public required Hardware Hardware { get; init; }

    /// <summary>The mesh (null: the graph's own).</summary>
    public Mesh? Mesh { get; init; }

    public RematPolicy Remat { get; init; } = RematPolicy.None;
    public ParameterLayout Layout { get; init; } = ParameterLayout.AsWritten;

    /// <summary>Compute dtype (null: the hardware's default, bf16 on accelerators).</summary>
    public string? DType { get; init; }

    /// <summary>Fraction of device memory the runtime, workspace and fragmentation are assumed to take.</summary>
    public double MemoryReserve { get; init; } = 0.10;
}

/// <summary>A prediction for one step: time, throughput, utilization, memory against capacity, and the breakdown.</summary>
public sealed record Prediction
{
    public required string Graph { get; init; }
    public required Hardware Hardware { get; init; }
    public required Mesh Mesh { get; init; }
    public required string Remat { get; init; }
    public required ParameterLayout Layout { get; init; }
    public required string DType { get; init; }
    public required long Devices { get; init; }
    public required int Pods { get; init; }
    public required long Hosts { get; init; }
    public required long Batch { get; init; }
    public required long TokensPerStep { get; init; }
    public required StepCost Cost { get; init; }
    public required double ModelFlopsPerStep { get; init; }
    public required double RecomputedFlopsPerStep { get; init; }
    public required double PeakFlopsPerDevice { get; init; }

    /// <summary>Per-device bytes by category at the simulated precision (parameters and optimizer state in the graph's dtype).</summary>
    public required IReadOnlyDictionary<string, long> MemoryPerDevice { get; init; }
    public required long MemoryCapacity { get; init; }
    public required double MemoryReserve { get; init; }
    public required TimeSpan CompileTime { get; init; }

    public double StepSeconds => Cost.StepSeconds;
    public double TokensPerSecond => TokensPerStep / StepSeconds;
    public double Mfu => ModelFlopsPerStep / (StepSeconds * Devices * PeakFlopsPerDevice);
    public double Hfu => (ModelFlopsPerStep + RecomputedFlopsPerStep) / (StepSeconds * Devices * PeakFlopsPerDevice);
    public long MemoryTotal => MemoryPerDevice.Values.Sum();
    public long MemoryUsable => (long)(MemoryCapacity * (1 - MemoryReserve));
    public bool Fits => MemoryTotal <= MemoryUsable;
}

/// <summary>
/// palmc's answer for clusters it cannot run: compiles the training step exactly as it would run it (autodiff with the
/// remat policy, propagation, partitioning, fusion), then prices the per-device program with <see cref="CostModel"/>
/// and its memory with <see cref="TrainingMemory"/>.
/// </summary>
public static class Simulator
{
    public static Prediction Predict(Graph forward, SimulationConfig config)
    {
        var sw = Stopwatch.StartNew();
        var mesh = SpmdCompiler.ResolveMesh(forward, config.Mesh);
        var g = ApplyLayout(forward, mesh, config.Layout);
        var compiled = TrainingCompiler.Compile(g, mesh, new TrainingConfig { Remat = config.Remat });
        var compileTime = sw.Elapsed;
        return Price(compiled, config, compileTime);
    }

    /// <summary>Prices an already compiled training step.</summary>
    public static Prediction Price(CompiledTraining compiled, SimulationConfig config, TimeSpan compileTime = default)
    {
        var hw = config.Hardware;
        var dtype = config.DType ?? hw.DefaultDType;
        var mesh = compiled.Spmd.Mesh;
        var topo = new Topology(hw, mesh);
        var cost = CostModel.Predict(compiled.Local, topo, dtype);
        // FLOPs in double: a count over the global graph of 540B at batch 2048 exceeds 64 bits (StepFlops is exact, in long).
        var (_, _, perToken, tokens) = StepFlops.Model(compiled.Training);
        double recomputed = compiled.Training.Gradients.Recomputed.Sum(r => (double)r.Node.Op.Flops(r.Node) * r.Trips);
        var memory = TrainingMemory.Of(compiled);
        double scale = CostModel.PrecisionScale(compiled.Local, dtype);
        var byCategory = new SortedDictionary<string, long>(StringComparer.Ordinal)
        {
            ["parameters"] = memory.Parameters,
            ["optimizer_state"] = memory.OptimizerState,
            ["gradients"] = (long)(memory.Gradients * scale),
            ["activations"] = (long)(memory.Activations * scale),
            ["inputs"] = memory.Inputs,
        };
        var batch = compiled.Training.Graph.Inputs.FirstOrDefault(a => a.Value.Name == "tokens")?.Value.Type.Dims[0].Size ?? 1;
        return new Prediction
        {
            Graph = compiled.Training.Graph.Name,
            Hardware = hw,
            Mesh = mesh,
            Remat = compiled.RematName,
            Layout = config.Layout,
            DType = dtype,
            Devices = topo.Devices,
            Pods = topo.Pods,
            Hosts = topo.Hosts,
            Batch = batch,
            TokensPerStep = tokens,
            Cost = cost,
            ModelFlopsPerStep = (double)(perToken ?? throw new SimulationException($"{compiled.Training.Graph.Name} is not PaLM-shaped (no heads, head_dim, seq dims): no model FLOPs for MFU")) * tokens,
            RecomputedFlopsPerStep = recomputed,
            PeakFlopsPerDevice = hw.Peak(dtype),
            MemoryPerDevice = byCategory,
            MemoryCapacity = hw.MemoryBytes,
            MemoryReserve = config.MemoryReserve,
            CompileTime = compileTime,
        };
    }

    /// <summary>
    /// A lower bound on per-device memory that needs no compile: each parameter's shard under the layout and twice
    /// that for the optimizer's m and v, which are laid out like it. (Gradients are left out: their propagated layout
    /// could be finer.) The search drops plans over capacity with it.
    /// </summary>
    public static long MemoryLowerBound(Graph forward, Mesh mesh, ParameterLayout layout)
    {
        var g = ApplyLayout(forward, mesh, layout);
        double total = 0;
        foreach (var a in g.Parameters)
        {
            var shards = a.Value.Sharding is { } s ? mesh.Product(s.AllAxes.Where(mesh.HasAxis)) : 1;
            total += 3.0 * a.Value.Type.Bytes / shards;
        }
        return (long)total;
    }

    /// <summary>The batch axes of <paramref name="g"/>: those its batch input (tokens) is split over, in order.</summary>
    public static ImmutableArray<string> BatchAxes(Graph g) =>
        g.Inputs.FirstOrDefault(a => a.Value.Type.Rank > 0)?.Value.Sharding is { } s ? [.. s.DimAxes[0]] : [];

    /// <summary><paramref name="g"/> with its parameters re-annotated for <paramref name="layout"/>.</summary>
    public static Graph ApplyLayout(Graph g, Mesh mesh, ParameterLayout layout)
    {
        if (layout == ParameterLayout.AsWritten) return g;
        var batchAxes = BatchAxes(g);
        if (layout == ParameterLayout.ShardedAcrossPods && (batchAxes.Length < 2 || !mesh.HasAxis(batchAxes[0]) || mesh.SizeOf(batchAxes[0]) < 2))
            throw new SimulationException($"layout across-pods shards weights over the outer batch axis, but {g.Name}'s mesh ({mesh}) has no such axis of size 2 or more");
        return ArgShardings.Rewrite(g, (arg, s) =>
        {
            if (arg.Kind != ArgKind.Parameter || s is null) return s;
            var dims = s.DimAxes.Select(axes => layout switch
            {
                ParameterLayout.ReplicatedOverBatch => axes.RemoveAll(batchAxes.Contains),
                // A dim split over a batch axis gains the batch axes before it (data → pod, data), unless already there.
                _ => axes.Any(batchAxes.Contains)
                    ? [.. batchAxes.TakeWhile(b => b != axes.First(batchAxes.Contains)).Where(b => !axes.Contains(b)), .. axes]
                    : axes,
            }).ToImmutableArray();
            return new Sharding(dims);
        });
    }
}
