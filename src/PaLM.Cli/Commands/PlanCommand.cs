using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using PaLM.Passes;
using PaLM.Spmd;
using Spectre.Console;

namespace PaLM.Cli.Commands;

/// <summary>
/// <c>palmc plan FILE [--mesh ...] [--json] [--explain NAME]</c>: the sharding plan of a graph on a mesh, before
/// anything runs: every parameter and named activation with its global shape, sharding and local shape, per-device
/// memory, and every collective of the per-device program with the op and line that needed it.
/// </summary>
internal static class PlanCommand
{
    public static Command Create()
    {
        var file = Common.FileArgument();
        var mesh = Common.MeshOption();
        var json = new Option<bool>("--json") { Description = "print the plan as JSON" };
        var explain = new Option<string?>("--explain") { Description = "print how tensor NAME got its sharding, back to the annotations" };
        var train = new Option<bool>("--train") { Description = "plan the whole training step: gradients, optimizer state and activations under --remat" };
        var training = new TrainingOptions();
        var cmd = new Command("plan", "Show how a graph is sharded over a mesh: layouts, per-device memory, collectives.") { file, mesh, json, explain, train };
        training.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(() =>
        {
            var g = Common.Load(r.GetValue(file)!);
            var isTrain = r.GetValue(train) || r.GetResult(training.Remat) is { Implicit: false };
            var compiled = isTrain ? training.Compile(r, g, r.GetValue(mesh)) : null;
            var plan = ShardingPlan.Of(compiled?.Spmd ?? Common.Partition(g, r.GetValue(mesh)));
            var memory = compiled is null ? null : TrainingMemory.Of(compiled);
            if (r.GetValue(explain) is { } name)
            {
                Console.Write(plan.Explain(name) ?? throw new UserError($"error: no tensor named '{name}' in {g.Name}"));
                return 0;
            }
            if (r.GetValue(json)) Console.WriteLine(JsonSerializer.Serialize(ToJson(plan, compiled, memory), new JsonSerializerOptions { WriteIndented = true }));
            else Render(plan, compiled, memory);
            return 0;
        }));
        return cmd;
    }

    internal static Dictionary<string, object?> ToJson(ShardingPlan plan, CompiledTraining? training = null, TrainingMemory? memory = null)
    {
        var json = ToJson(plan);
        if (training is null || memory is null) return json;
        json["memory_per_device_bytes"] = memory.ByCategory;
        json["memory_per_device_total_bytes"] = memory.Total;
        json["training"] = new Dictionary<string, object?>
        {
            ["remat"] = training.RematName,
            ["remat_description"] = training.Training.Remat.Description,
            ["recomputed_flops_per_step"] = memory.RecomputedFlopsPerStep,
            ["saved_activation_bytes_per_layer"] = memory.ResidualsPerLayerBytes,
            ["fusion"] = training.Fusion?.ToString(),
            ["optimizer"] = training.Training.Options.Describe(),
        };
        return json;
    }

    internal static Dictionary<string, object?> ToJson(ShardingPlan plan) => new()
    {
        ["graph"] = plan.Program.Source.Name,
        ["mesh"] = new Dictionary<string, object?>
        {
            ["axes"] = plan.Mesh.Axes.Select(a => new Dictionary<string, object> { ["name"] = a.Name, ["size"] = a.Size }).ToList(),
            ["devices"] = plan.Mesh.DeviceCount,
        },
        ["tensors"] = plan.Tensors.Select(t => new Dictionary<string, object?>
        {
            ["name"] = t.Name,
            ["kind"] = t.Kind,
            ["dtype"] = IR.DTypes.Name(t.GlobalType.DType),
            ["dims"] = t.GlobalType.Dims.Select(d => d.Name).ToList(),
            ["global_shape"] = t.GlobalType.Shape,
            ["sharding"] = t.GlobalType.Dims.Select((d, i) => t.Sharding.DimAxes[i].ToList()).ToList(),
            ["sharding_text"] = t.ShardingText,
            ["local_shape"] = t.LocalShape,
            ["bytes_per_device"] = t.BytesPerDevice,
            ["origin"] = t.Origin,
            ["line"] = t.Loc?.Line,
        }).ToList(),
        ["collectives"] = plan.Collectives.Select(c => new Dictionary<string, object?>
        {
            ["kind"] = c.KindName,
            ["axes"] = c.Axes.ToList(),
            ["tensor"] = c.Tensor,
            ["from"] = c.From,
            ["to"] = c.To,
            ["bytes_per_device"] = c.BytesPerDevice,
            ["count_per_step"] = c.CountPerStep,
            ["needed_by"] = c.NeededBy,
            ["line"] = c.Loc?.Line,
            ["reason"] = c.Reason,
        }).ToList(),
        ["collective_totals"] = plan.Summary.Select(s => new Dictionary<string, object?>
        {
            ["kind"] = s.Kind,
            ["axes"] = s.Axes.ToList(),
            ["count_per_step"] = s.CountPerStep,
            ["bytes_per_device_per_step"] = s.BytesPerDevicePerStep,
        }).ToList(),
        ["memory_per_device_bytes"] = plan.MemoryPerDevice,
        ["parameter_bytes_total"] = plan.ParameterBytesTotal,
        ["collectives_per_step"] = plan.CollectivesPerStep,
        ["collective_bytes_per_device_per_step"] = plan.CollectiveBytesPerDevicePerStep,
        ["planning_seconds"] = new Dictionary<string, double>
        {
            ["propagate"] = plan.Program.PropagateTime.TotalSeconds,
            ["partition"] = plan.Program.PartitionTime.TotalSeconds,
        },
    };

    private static void Render(ShardingPlan plan, CompiledTraining? training, TrainingMemory? memory)
    {
        string B(long b) => Bytes(b);
        AnsiConsole.Write(new Rule($"{Markup.Escape(plan.Program.Source.Name)} on mesh {Markup.Escape(plan.Mesh.ToString())} ({plan.Mesh.DeviceCount:N0} devices)").LeftJustified());
        var t = new Table().AddColumns("tensor", "kind", "global shape", "sharding", "local shape", "bytes/device", "from");
        foreach (var row in plan.Tensors)
            t.AddRow(Markup.Escape("%" + row.Name), row.Kind, Markup.Escape(row.GlobalType.ToString() + " " + string.Join("x", row.GlobalType.Shape)),
                Markup.Escape(row.ShardingText), Markup.Escape("[" + string.Join(", ", row.LocalShape) + "]"), B(row.BytesPerDevice), Markup.Escape(row.Origin));
        AnsiConsole.Write(t);

        var m = new Table().AddColumn("memory per device").AddColumn(new TableColumn("bytes").RightAligned());
        foreach (var (k, v) in memory?.ByCategory ?? plan.MemoryPerDevice) m.AddRow(k, B(v));
        if (memory is not null)
        {
            m.AddRow("total", B(memory.Total));
            m.AddRow(Markup.Escape($"saved per layer (remat {training!.RematName})"), B(memory.ResidualsPerLayerBytes));
            m.AddRow("recomputed FLOPs per step (all devices)", memory.RecomputedFlopsPerStep.ToString("N0", CultureInfo.InvariantCulture));
        }
        m.AddRow("parameters, unsharded total", B(plan.ParameterBytesTotal));
        AnsiConsole.Write(m);

        var c = new Table().AddColumns("collective", "axes", "tensor", "from -> to", "bytes/device", "per step", "needed by", "why");
        foreach (var x in plan.Collectives)
            c.AddRow(x.KindName, Markup.Escape(string.Join(",", x.Axes)), Markup.Escape("%" + x.Tensor), Markup.Escape($"{x.From} -> {x.To}"),
                B(x.BytesPerDevice), x.CountPerStep.ToString(CultureInfo.InvariantCulture),
                Markup.Escape(x.NeededBy + (x.Loc is { } l ? $" (line {l.Line})" : "")), Markup.Escape(x.Reason));
        AnsiConsole.Write(c);

        var s = new Table().AddColumns("totals per step", "axes", "count", "bytes/device");
        foreach (var x in plan.Summary)
            s.AddRow(x.Kind, Markup.Escape(string.Join(",", x.Axes)), x.CountPerStep.ToString("N0", CultureInfo.InvariantCulture), B(x.BytesPerDevicePerStep));
        s.AddRow("all", "", plan.CollectivesPerStep.ToString("N0", CultureInfo.InvariantCulture), B(plan.CollectiveBytesPerDevicePerStep));
        AnsiConsole.Write(s);
    }

    /// <summary>Bytes with a binary unit, e.g. <c>1.50 GiB</c> (exact count below 1 KiB).</summary>
    internal static string Bytes(long b)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double v = b;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1) { v /= 1024; u++; }
        return u == 0 ? $"{b} B" : string.Create(CultureInfo.InvariantCulture, $"{v:F2} {units[u]}");
    }
}
