using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Spmd;

namespace PaLM.Benchmarks;

/// <summary>
/// How sharding propagation and partitioning scale with the number of layers and the size of the mesh. The graphs
/// are made as text, as <c>graphs/palm-cpu.palm</c> is (a <c>dim</c> line, a <c>mesh</c> line and
/// <c>include "arch/palm.palm"</c>), with sizes every mesh here divides: batch over pod×data (64), vocab over data
/// (256), d_model over data×model (1024), heads and d_ff over model (16, 4096).
/// </summary>
[MemoryDiagnoser]
[Config(typeof(Config))]
public class ScalingBenchmarks
{
    private Graph _graph = null!;
    private Mesh _mesh = null!;
    private Propagation _propagation = null!;

    /// <summary>Number of decoder layers.</summary>
    [ParamsSource(nameof(LayerCounts))]
    public int Layers { get; set; }

    /// <summary>The mesh, shown as DATAxMODEL (pod = 1).</summary>
    [ParamsSource(nameof(Meshes))]
    public MeshShape Mesh { get; set; } = new(1, 1);

    /// <summary>6, 24 and 96 layers; smoke mode: 6.</summary>
    public static IEnumerable<int> LayerCounts => BenchSetup.Smoke ? [6] : [6, 24, 96];

    /// <summary>1, 8, 128 and 1024 devices; smoke mode: 1 and 8.</summary>
    public static IEnumerable<MeshShape> Meshes => BenchSetup.Smoke ? [new(1, 1), new(4, 2)] : [new(1, 1), new(4, 2), new(16, 8), new(64, 16)];

    /// <summary>The DSL text of a PaLM with <paramref name="layers"/> layers on a data×model mesh.</summary>
    public static string Source(int layers, int data, int model) =>
        $"""
        dim layers = {layers}, heads = 16, head_dim = 64, d_model = 1024, d_ff = 4096
        dim vocab = 256, seq = 512, batch = 64
        mesh pod = 1, data = {data}, model = {model}
        include "arch/palm.palm"
        """;

    /// <summary>Builds the graph (as if it were <c>graphs/scaling-LAYERS-MESH.palm</c>, so the include resolves) and propagates once.</summary>
    [GlobalSetup]
    public void Setup()
    {
        var path = Path.Combine(BenchSetup.RepoRoot, "graphs", $"scaling-{Layers}-{Mesh}.palm");
        _graph = Frontend.CompileText(path, Source(Layers, Mesh.Data, Mesh.Model));
        _mesh = SpmdCompiler.ResolveMesh(_graph, null);
        _propagation = Propagation.Run(_graph, _mesh);
    }

    /// <summary>Sharding propagation.</summary>
    [Benchmark]
    public Propagation Propagate() => Propagation.Run(_graph, _mesh);

    /// <summary>Partitioning, given the propagated shardings.</summary>
    [Benchmark]
    public Graph Partition() => Partitioner.Run(_graph, _mesh, _propagation).Local;

    /// <summary>Milliseconds a call: three warmups, ten iterations, invocation count from the pilot stage.</summary>
    public sealed class Config : ManualConfig
    {
        /// <summary>Three warmups and ten measured iterations, one launch, unroll factor 1.</summary>
        public Config() => Add(BenchSetup.JobConfig(BenchSetup.Measure("Scaling", warmups: 3, iterations: 10)));
    }
}

/// <summary>A data×model mesh (pod = 1), ordered by device count so result tables read from small to large.</summary>
public sealed record MeshShape(int Data, int Model) : IComparable<MeshShape>, IComparable
{
    /// <summary>Devices in the mesh.</summary>
    public int Devices => Data * Model;

    /// <inheritdoc/>
    public int CompareTo(MeshShape? other) =>
        other is null ? 1 : Devices != other.Devices ? Devices.CompareTo(other.Devices) : Data.CompareTo(other.Data);

    /// <inheritdoc/>
    public int CompareTo(object? obj) => CompareTo(obj as MeshShape);

    /// <summary>DATAxMODEL, as the result tables show it.</summary>
    public override string ToString() => $"{Data}x{Model}";
}
