using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using PaLM.IR;

namespace PaLM.Spmd;

/// <summary>One row of a plan's tensor table.</summary>
public sealed record TensorRow(string Name, string Kind, TensorType GlobalType, Sharding Sharding, long[] LocalShape,
    long BytesPerDevice, string Origin, SourceLoc? Loc)
{
    public string ShardingText => Sharding.Format(GlobalType);
}

/// <summary>Collectives of one kind over the same axes, summed per step.</summary>
public sealed record CollectiveSummary(string Kind, ImmutableArray<string> Axes, long CountPerStep, long BytesPerDevicePerStep);

/// <summary>
/// What a person reads to understand a compiled layout: the mesh; every parameter, input and named activation with
/// global shape, sharding, local shape and where the sharding came from; per-device memory; every collective with
/// why it is there. Built from the compiled program, so it describes exactly what runs.
/// </summary>
public sealed class ShardingPlan
{
    private ShardingPlan(SpmdProgram program)
    {
        Program = program;
        var prop = program.Propagation;
        var mesh = program.Mesh;
        var rows = new List<TensorRow>();
        var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        TensorRow Row(Value v, string kind)
        {
            var s = prop.ShardingOf(v);
            var local = s.LocalType(v.Type, mesh);
            return new TensorRow(v.Name, kind, v.Type, s, local.Shape, local.Bytes, DescribeOrigin(v), v.Loc);
        }
        foreach (var a in program.Source.Args)
        {
            seen.Add(a.Value);
            rows.Add(Row(a.Value, a.Kind == ArgKind.Parameter ? "parameter" : "input"));
        }
        // Named activations: values the DSL named (they carry a location), skipping the body's views of arguments.
        var argViews = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        foreach (var n in program.Source.Body.AllNodes())
            foreach (var r in n.Regions)
                foreach (var a in r.Args) argViews.Add(a);
        foreach (var v in program.Source.Body.AllValues())
            if (v.Loc is not null && seen.Add(v) && !argViews.Contains(v))
                rows.Add(Row(v, "activation"));
        Tensors = rows;

        ParameterBytesPerDevice = program.Local.Args.Where(a => a.Kind == ArgKind.Parameter).Sum(a => a.Value.Type.Bytes);
        ParameterBytesTotal = program.Source.Args.Where(a => a.Kind == ArgKind.Parameter).Sum(a => a.Value.Type.Bytes);
        InputBytesPerDevice = program.Local.Args.Where(a => a.Kind == ArgKind.Input).Sum(a => a.Value.Type.Bytes);
        Summary = program.Collectives
            .GroupBy(c => (c.KindName, Axes: string.Join(",", c.Axes)))
            .Select(g => new CollectiveSummary(g.Key.KindName, g.First().Axes, g.Sum(c => c.CountPerStep), g.Sum(c => c.CountPerStep * c.BytesPerDevice)))
            .OrderBy(s => s.Kind, StringComparer.Ordinal).ThenBy(s => string.Join(",", s.Axes), StringComparer.Ordinal).ToList();
    }

    public static ShardingPlan Of(SpmdProgram program) => new(program);

    public SpmdProgram Program { get; }
    public Mesh Mesh => Program.Mesh;
    public IReadOnlyList<TensorRow> Tensors { get; }
    public IReadOnlyList<CollectiveRecord> Collectives => Program.Collectives;
    public IReadOnlyList<CollectiveSummary> Summary { get; }

    /// <summary>Bytes of one device's parameter pieces (all layers).</summary>
    public long ParameterBytesPerDevice { get; }

    /// <summary>Bytes of all parameters, unsharded.</summary>
    public long ParameterBytesTotal { get; }

    public long InputBytesPerDevice { get; }

    public long CollectivesPerStep => Program.Collectives.Sum(c => c.CountPerStep);

    public long CollectiveBytesPerDevicePerStep => Program.Collectives.Sum(c => c.CountPerStep * c.BytesPerDevice);

    /// <summary>Per-device memory by category (bytes). Training categories are added by the training step.</summary>
    public IReadOnlyDictionary<string, long> MemoryPerDevice => new SortedDictionary<string, long>(StringComparer.Ordinal)
    {
        ["parameters"] = ParameterBytesPerDevice,
        ["inputs"] = InputBytesPerDevice,
    };

    private string DescribeOrigin(Value v)
    {
        var o = Program.Propagation.OriginOf(v);
        if (o.Annotated) return "annotation";
        if (o.Dims.IsEmpty) return Program.Propagation.ShardingOf(v).IsReplicated ? "replicated (nothing splits it)" : "propagated";
        var first = o.Dims[0];
        var from = first.From is { } f ? $" from %{f.Name}" : "";
        var line = first.Node?.Loc is { } l ? $" (line {l.Line})" : "";
        return $"{RuleName(first)}{from}{line}";
    }

    /// <summary>An op's name, or the whole rule text for the ties of a repeat (which read as a phrase).</summary>
    private static string RuleName(DimOrigin d) => d.Node is { } n && n.Op.Sharding(n).IsFactorRule ? n.Op.Name : d.Rule;

    /// <summary>
    /// The chain that decided <paramref name="name"/>'s sharding, back to annotations: one line per dim, each followed
    /// by the explanation of the value it came from. Null when no value has that name.
    /// </summary>
    public string? Explain(string name)
    {
        var v = Program.Source.Body.AllValues().FirstOrDefault(x => x.Name == name);
        if (v is null) return null;
        var sb = new StringBuilder();
        ExplainInto(sb, v, 0, new HashSet<Value>(ReferenceEqualityComparer.Instance));
        var needed = Program.Collectives.Where(c => c.Tensor == name).ToList();
        if (needed.Count > 0)
        {
            sb.Append("collectives on %").Append(name).Append(":\n");
            foreach (var c in needed) sb.Append("  ").Append(FormatCollective(c)).Append('\n');
        }
        return sb.ToString();
    }

    private void ExplainInto(StringBuilder sb, Value v, int depth, HashSet<Value> seen)
    {
        var prop = Program.Propagation;
        var pad = new string(' ', depth * 2);
        var s = prop.ShardingOf(v);
        sb.Append(pad).Append('%').Append(v.Name).Append(": ").Append(v.Type).Append(' ').Append(s.Format(v.Type));
        if (v.Loc is { } loc) sb.Append("  (").Append(Path.GetFileName(loc.File)).Append(':').Append(loc.Line).Append(')');
        var o = prop.OriginOf(v);
        if (o.Annotated) { sb.Append("  <- annotated @shard\n"); return; }
        if (!seen.Add(v)) { sb.Append("  (see above)\n"); return; }
        if (o.Dims.IsEmpty) { sb.Append(s.IsReplicated ? "  <- replicated: no annotation or rule splits it\n" : "\n"); return; }
        sb.Append('\n');
        foreach (var d in o.Dims)
        {
            sb.Append(pad).Append("  dim ").Append(v.Type.Dims[d.Dim].Name).Append(" <- ").Append(d.Rule);
            if (d.Node?.Loc is { } l) sb.Append(" at ").Append(Path.GetFileName(l.File)).Append(':').Append(l.Line);
            sb.Append('\n');
            if (d.From is { } from && depth < 24) ExplainInto(sb, from, depth + 2, seen);
        }
    }

    public static string FormatCollective(CollectiveRecord c) =>
        string.Create(CultureInfo.InvariantCulture,
            $"{c.KindName} over {string.Join(",", c.Axes)} of %{c.Tensor} {c.From} -> {c.To}: {c.BytesPerDevice} B/device x {c.CountPerStep}/step, for {c.NeededBy}{(c.Loc is { } l ? $" at {Path.GetFileName(l.File)}:{l.Line}" : "")} ({c.Reason})");

    /// <summary>The plan as plain, deterministic text (no timings): golden tests and logs.</summary>
    public string ToText()
    {
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.Append("mesh ").Append(Mesh).Append(" (").Append(Mesh.DeviceCount.ToString(inv)).Append(" devices)\n\n");
        sb.Append("tensors\n");
        foreach (var t in Tensors)
            sb.Append(inv, $"  {t.Kind,-10} %{t.Name}: {t.GlobalType} {t.ShardingText} local [{string.Join(", ", t.LocalShape)}] {t.BytesPerDevice} B  <- {t.Origin}\n");
        sb.Append("\nmemory per device\n");
        foreach (var (k, v) in MemoryPerDevice) sb.Append(inv, $"  {k}: {v} B\n");
        sb.Append("\ncollectives\n");
        foreach (var c in Collectives) sb.Append("  ").Append(FormatCollective(c)).Append('\n');
        sb.Append("\ntotals per step\n");
        foreach (var s in Summary) sb.Append(inv, $"  {s.Kind} over {string.Join(",", s.Axes)}: {s.CountPerStep} x, {s.BytesPerDevicePerStep} B/device\n");
        sb.Append(inv, $"  all: {CollectivesPerStep} collectives, {CollectiveBytesPerDevicePerStep} B/device\n");
        return sb.ToString();
    }
}
