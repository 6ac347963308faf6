using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Perf;
using PaLM.Sim;
using Spectre.Console;

namespace PaLM.Cli.Commands;

/// <summary>
/// <c>palmc simulate FILE --hardware NAME [--mesh ...] [--batch B] [--remat P] [--json]</c>: predicts a training step on
/// a cluster palmc cannot run, from the per-device program it would run (docs/simulation.md). <c>--search</c> ranks
/// layouts for a device count; <c>--sweep</c> writes scaling tables; <c>--measure</c> (hardware cpu) runs the step here
/// and reports measured over predicted.
/// </summary>
internal static class SimulateCommand
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static Command Create()
    {
        var files = new Argument<string[]>("FILE") { Description = "a .palm DSL file (several with --sweep)", Arity = ArgumentArity.ZeroOrMore };
        var hardware = new Option<string?>("--hardware") { Description = "hardware from the catalog: tpu-v4, a100-80gb, h100-sxm, h200, cpu (this machine, measured), or one from --hardware-file" };
        var hardwareFile = new Option<string[]>("--hardware-file") { Description = "a JSON file adding devices to the catalog (docs/simulation.md)", AllowMultipleArgumentsPerToken = false };
        var listHardware = new Option<bool>("--list-hardware") { Description = "list the catalog and exit" };
        var mesh = Common.MeshOption();
        var batch = new Option<long?>("--batch") { Description = "global batch in sequences (resizes the graph's batch dim)" };
        var remat = new Option<string>("--remat") { Description = "rematerialization policy: none, full, dots, palm", DefaultValueFactory = _ => "none" };
        var layout = new Option<string>("--layout") { Description = "parameter layout: as-written, replicated (over batch axes), across-pods (FSDP over pods too)", DefaultValueFactory = _ => "as-written" };
        var dtype = new Option<string?>("--dtype") { Description = "compute dtype (default: the hardware's, bf16 on accelerators)" };
        var json = new Option<bool>("--json") { Description = "print the prediction as JSON" };
        var search = new Option<bool>("--search") { Description = "search meshes, parameter layouts and remat policies for the device count of --mesh (or --devices)" };
        var devices = new Option<long?>("--devices") { Description = "device count to search over (default: the mesh's)" };
        var top = new Option<int>("--top") { Description = "plans to show with --search", DefaultValueFactory = _ => 8 };
        var maxModel = new Option<int>("--max-model") { Description = "largest model-axis size --search tries", DefaultValueFactory = _ => 64 };
        var sweep = new Option<bool>("--sweep") { Description = "predict every FILE against chip count and batch size; write a table and an SVG plot" };
        var chips = new Option<string?>("--chips") { Description = "chip counts for --sweep, e.g. 256,512,1024 (default 256..6144)" };
        var batches = new Option<string?>("--batches") { Description = "batch sizes for --sweep (default 256,512,1024,2048)" };
        var output = new Option<string?>("-o", "--output") { Description = "with --sweep: write OUT.md and OUT.svg" };
        var measure = new Option<bool>("--measure") { Description = "with --hardware cpu: also run the step here (palmc bench) and report measured / predicted" };
        var steps = new Option<int>("--steps") { Description = "timed steps for --measure", DefaultValueFactory = _ => 3 };
        var cmd = new Command("simulate", "Predict step time, MFU and memory of a training step on a cluster (cost model over the per-device program).")
        {
            files, hardware, hardwareFile, listHardware, mesh, batch, remat, layout, dtype, json, search, devices, top, maxModel, sweep, chips, batches, output, measure, steps,
        };
        cmd.SetAction(r => Common.Guard(() =>
        {
            var catalog = HardwareCatalog.Load(r.GetValue(hardwareFile), () => MachineHardware.Measure());
            if (r.GetValue(listHardware)) return ListHardware(catalog);
            var hwName = r.GetValue(hardware) ?? throw new UserError($"error: --hardware is required (known: {string.Join(", ", catalog.Names)})");
            var hw = catalog.Get(hwName);
            var policy = ParseRemat(r.GetValue(remat)!);
            var lay = ParseLayout(r.GetValue(layout)!);
            var paths = r.GetValue(files) ?? [];
            if (paths.Length == 0) throw new UserError("error: give a .palm FILE to simulate (or --list-hardware)");
            long? batchSize = r.GetValue(batch);
            if (batchSize is <= 0) throw new UserError("error: --batch must be positive");
            Graph Load(string path, long? b) => Common.Load(path, b is { } n ? new Dictionary<string, long> { ["batch"] = n } : null);

            if (r.GetValue(top) < 1) throw new UserError("error: --top must be at least 1");
            if (r.GetValue(maxModel) < 1) throw new UserError("error: --max-model must be at least 1");
            if (r.GetValue(devices) is <= 0) throw new UserError("error: --devices must be positive");
            foreach (var path in paths)
                if (!File.Exists(path)) throw new UserError($"{path}: error: no such file");
            if (r.GetValue(sweep))
            {
                foreach (var path in paths) Common.Load(path);   // the files' own errors, reported once and cleanly
                return RunSweep(paths, (p, b) => Load(p, b), hw, policy, r.GetValue(chips), r.GetValue(batches), r.GetValue(dtype), r.GetValue(output), r.GetValue(json));
            }
            if (paths.Length != 1) throw new UserError("error: give one FILE (several only with --sweep)");
            var g = Load(paths[0], batchSize);
            var meshOverride = Common.ParseMesh(r.GetValue(mesh));
            if (r.GetValue(search))
            {
                var n = r.GetValue(devices) ?? Spmd.SpmdCompiler.ResolveMesh(g, meshOverride).DeviceCount;
                return RunSearch(g, hw, n, r.GetValue(dtype), r.GetValue(top), r.GetValue(maxModel), meshOverride is null ? null : Spmd.SpmdCompiler.ResolveMesh(g, meshOverride), policy, lay, r.GetValue(json));
            }
            var config = new SimulationConfig { Hardware = hw, Mesh = meshOverride, Remat = policy, Layout = lay, DType = r.GetValue(dtype) };
            var p = Predict(g, config);
            List<PaperRow>? paper = null;
            if (PaperComparison.Applies(p))
            {
                // The paper's weak scaling: one pod with its half of the batch.
                var onePodMesh = new Mesh([.. p.Mesh.Axes.Select(a => a.Name == "pod" ? new MeshAxis(a.Name, 1) : a)]);
                var half = Load(paths[0], p.Batch / 2);
                paper = PaperComparison.Rows(p, Predict(half, config with { Mesh = onePodMesh }));
            }
            BenchReport? measured = null;
            if (r.GetValue(measure))
            {
                if (hw.Origin != "measured by palmc") throw new UserError($"error: --measure runs the step on this machine, so it needs --hardware cpu, not {hw.Name}");
                var compiled = TrainingCompiler.Compile(Simulator.ApplyLayout(g, p.Mesh, lay), p.Mesh, new TrainingConfig { Remat = policy });
                measured = StepBench.Run(compiled, 0, new BenchOptions { Steps = Math.Max(1, r.GetValue(steps)), Warmup = 1, PeakSizes = [2048], PeakRepetitions = 5 });
            }
            if (r.GetValue(json)) Console.WriteLine(JsonSerializer.Serialize(ToJson(p, paper, measured), new JsonSerializerOptions { WriteIndented = true }));
            else Render(p, paper, measured);
            return 0;
        }));
        return cmd;
    }

    private static Prediction Predict(Graph g, SimulationConfig config)
    {
        try { return Simulator.Predict(g, config); }
        catch (InvalidOperationException e) { throw new UserError($"error: {e.Message}"); }
    }

    private static RematPolicy ParseRemat(string name)
    {
        if (name == "auto") throw new UserError("error: --remat auto is not simulated; --search compares none, dots, palm and full");
        try { return RematPolicy.Parse(name); }
        catch (ArgumentException e) { throw new UserError($"error: --remat: {e.Message}"); }
    }

    private static ParameterLayout ParseLayout(string name) => ParameterLayouts.Parse(name)
        ?? throw new UserError($"error: --layout must be {string.Join(", ", ParameterLayouts.Names)}, not '{name}'");

    private static int ListHardware(HardwareCatalog catalog)
    {
        var t = new Table().AddColumns("name", "peak (dtype: TFLOP/s)", "memory", "HBM GB/s", "chips/host", "chips/pod", "interconnect", "network/host", "from");
        foreach (var n in catalog.Names.Where(n => n != "cpu"))
        {
            var h = catalog.Get(n);
            t.AddRow(Markup.Escape(h.Name), Markup.Escape(string.Join(", ", h.PeakFlops.Select(kv => string.Create(Inv, $"{kv.Key}: {kv.Value / 1e12:G4}")))),
                PlanCommand.Bytes(h.MemoryBytes), (h.MemoryBandwidth / 1e9).ToString("F0", Inv), h.ChipsPerHost.ToString(Inv), h.ChipsPerPod.ToString(Inv),
                Markup.Escape(h.Interconnect.IsTorus
                    ? string.Create(Inv, $"{h.Interconnect.TorusDims}D torus, {h.Interconnect.LinksPerChip} x {h.Interconnect.LinkBandwidth / 1e9:G3} GB/s")
                    : string.Create(Inv, $"switch, {h.Interconnect.LinksPerChip} x {h.Interconnect.LinkBandwidth / 1e9:G3} GB/s")),
                string.Create(Inv, $"{h.Network.BandwidthPerHost / 1e9:G3} GB/s"), Markup.Escape(h.Origin));
        }
        t.AddRow("cpu", "measured on first use", "MemTotal", "measured", "1", "1", "memory", "memory", "measured by palmc");
        AnsiConsole.Write(t);
        return 0;
    }

    // ---- one prediction ---------------------------------------------------------------------------------------------

    private static void Render(Prediction p, List<PaperRow>? paper, BenchReport? measured)
    {
        AnsiConsole.Write(new Rule(Markup.Escape($"{p.Graph} on {p.Devices:N0} x {p.Hardware.Name} ({p.Pods} pod{(p.Pods == 1 ? "" : "s")}, {p.Hosts:N0} hosts)")).LeftJustified());
        Console.WriteLine(string.Create(Inv, $"mesh {p.Mesh}; {ParameterLayouts.Phrase(p.Layout)}; remat {p.Remat}; compute in {p.DType}; batch {p.Batch} sequences, {p.TokensPerStep:N0} tokens/step"));
        Console.WriteLine(string.Create(Inv, $"step {Time(p.StepSeconds)}   tokens/s {p.TokensPerSecond:N0}   MFU {p.Mfu:P1}   HFU {p.Hfu:P1}   (peak {p.PeakFlopsPerDevice / 1e12:G4} TFLOP/s/chip, matmul efficiency {p.Hardware.MatmulEfficiency:P0})"));
        Console.WriteLine(string.Create(Inv, $"time: compute {Time(p.Cost.ComputeSeconds)} + memory-bound {Time(p.Cost.MemoryBoundSeconds)} + exposed communication {Time(p.Cost.ExposedCommunicationSeconds)} (of {Time(p.Cost.CommunicationSeconds)})"));
        var c = new Table().AddColumns("collectives over", "count/step", "bytes/device/step", "time", "exposed");
        foreach (var a in p.Cost.ByAxes)
            c.AddRow(Markup.Escape(a.Axes), a.Count.ToString("N0", Inv), PlanCommand.Bytes((long)a.BytesPerDevice), Time(a.Seconds), Time(a.ExposedSeconds));
        AnsiConsole.Write(c);
        Console.WriteLine(string.Create(Inv, $"bytes crossing the pod boundary per host per step: {p.Cost.CrossPodBytesPerHost:N0} ({p.Cost.CrossPodBytesPerHost / 1e9:F2} GB)"));
        var m = new Table().AddColumn("memory per device").AddColumn(new TableColumn("bytes").RightAligned());
        foreach (var (k, v) in p.MemoryPerDevice) m.AddRow(k, PlanCommand.Bytes(v));
        m.AddRow("total", PlanCommand.Bytes(p.MemoryTotal));
        m.AddRow(Markup.Escape($"usable ({p.MemoryCapacity / 1e9:F1} GB less {p.MemoryReserve:P0} reserve)"), PlanCommand.Bytes(p.MemoryUsable));
        AnsiConsole.Write(m);
        Console.WriteLine(p.Fits
            ? string.Create(Inv, $"fits: {p.MemoryTotal:N0} B of {p.MemoryUsable:N0} B usable per device")
            : string.Create(Inv, $"DOES NOT FIT: needs {p.MemoryTotal:N0} B per device, {p.MemoryUsable:N0} B usable ({p.Hardware.Name}: {p.MemoryCapacity:N0} B)"));
        if (paper is not null)
        {
            var t = new Table().AddColumns("PaLM 540B, 6144 TPU v4", "palmc predicts", "paper", "gap");
            foreach (var row in paper)
                t.AddRow(Markup.Escape(row.Metric), row.Predicted.ToString(row.Format, Inv), row.Published.ToString(row.Format, Inv), row.Gap.ToString("+0.0%;-0.0%", Inv));
            AnsiConsole.Write(t);
            Console.WriteLine("(figures from Chowdhery et al. 2022, never inputs to the model; docs/simulation.md explains the gaps)");
        }
        if (measured is not null)
            Console.WriteLine(string.Create(Inv,
                $"measured here: step {measured.Generated.Median:F3} s median ({measured.Generated.Min:F3}-{measured.Generated.Max:F3}, {measured.Generated.Samples.Count} steps); measured / predicted = {measured.Generated.Median / p.StepSeconds:F2}"));
    }

    /// <summary>Seconds with a unit that keeps three significant places: 16.599 s, 148.2 ms, 85.3 µs.</summary>
    private static string Time(double s) => s >= 1 || s == 0 ? string.Create(Inv, $"{s:F3} s")
        : s >= 1e-3 ? string.Create(Inv, $"{s * 1e3:F1} ms") : string.Create(Inv, $"{s * 1e6:F1} µs");

    private static Dictionary<string, object?> ToJson(Prediction p, List<PaperRow>? paper, BenchReport? measured)
    {
        var memory = new SortedDictionary<string, long>(p.MemoryPerDevice.ToDictionary(), StringComparer.Ordinal) { ["total"] = p.MemoryTotal };
        var j = new Dictionary<string, object?>
        {
            ["graph"] = p.Graph,
            ["hardware"] = p.Hardware.Name,
            ["mesh"] = p.Mesh.Axes.ToDictionary(a => a.Name, a => a.Size),
            ["devices"] = p.Devices,
            ["pods"] = p.Pods,
            ["hosts"] = p.Hosts,
            ["remat"] = p.Remat,
            ["layout"] = ParameterLayouts.Name(p.Layout),
            ["dtype"] = p.DType,
            ["batch"] = p.Batch,
            ["tokens_per_step"] = p.TokensPerStep,
            ["step_seconds"] = p.StepSeconds,
            ["tokens_per_second"] = p.TokensPerSecond,
            ["mfu"] = p.Mfu,
            ["hfu"] = p.Hfu,
            ["model_flops_per_step"] = p.ModelFlopsPerStep,
            ["recomputed_flops_per_step"] = p.RecomputedFlopsPerStep,
            ["peak_flops_per_device"] = p.PeakFlopsPerDevice,
            ["matmul_efficiency"] = p.Hardware.MatmulEfficiency,
            ["fits"] = p.Fits,
            ["memory_per_device_bytes"] = memory,
            ["memory_capacity_bytes"] = p.MemoryCapacity,
            ["memory_usable_bytes"] = p.MemoryUsable,
            ["cross_pod_bytes_per_host"] = p.Cost.CrossPodBytesPerHost,
            ["breakdown"] = new Dictionary<string, object>
            {
                ["compute_seconds"] = p.Cost.ComputeSeconds,
                ["memory_bound_seconds"] = p.Cost.MemoryBoundSeconds,
                ["communication_seconds"] = p.Cost.CommunicationSeconds,
                ["exposed_communication_seconds"] = p.Cost.ExposedCommunicationSeconds,
                ["by_axes"] = p.Cost.ByAxes.Select(a => new Dictionary<string, object>
                {
                    ["axes"] = a.Axes, ["count"] = a.Count, ["bytes_per_device"] = a.BytesPerDevice, ["seconds"] = a.Seconds, ["exposed_seconds"] = a.ExposedSeconds,
                }).ToList(),
            },
            ["compile_seconds"] = p.CompileTime.TotalSeconds,
        };
        if (paper is not null)
            j["paper"] = paper.ToDictionary(r => r.Metric, r => new Dictionary<string, double> { ["predicted"] = r.Predicted, ["published"] = r.Published, ["gap"] = r.Gap });
        if (measured is not null)
        {
            j["measured_step_seconds_median"] = measured.Generated.Median;
            j["measured_over_predicted"] = measured.Generated.Median / p.StepSeconds;
        }
        return j;
    }

    // ---- search -----------------------------------------------------------------------------------------------------

    private static int RunSearch(Graph g, Hardware hw, long devices, string? dtype, int top, int maxModel, Mesh? given, RematPolicy givenRemat,
        ParameterLayout givenLayout, bool json)
    {
        SearchReport report = null!;
        void Search(Action<int, int>? progress) => report = LayoutSearch.Run(g, hw, devices, dtype, maxModel, progress: progress);
        if (!json && !Console.IsOutputRedirected)
            AnsiConsole.Progress().Start(ctx =>
            {
                var task = ctx.AddTask($"searching {devices:N0} x {hw.Name}");
                Search((done, total) => { task.MaxValue = total; task.Value = done; });
            });
        else Search(null);

        // The user's own plan (the graph's or --mesh's layout), shown beside the winners wherever it ranks.
        var mine = given is null ? null : report.Ranked.Concat(report.Rejected).FirstOrDefault(o =>
            o.Candidate.Mesh.ToString() == given.ToString() && o.Candidate.Layout == givenLayout && o.Candidate.Remat.Name == givenRemat.Name);
        if (json)
        {
            object Row(SearchOutcome o, int? rank) => new Dictionary<string, object?>
            {
                ["rank"] = rank,
                ["mesh"] = o.Candidate.Mesh.Axes.ToDictionary(a => a.Name, a => a.Size),
                ["layout"] = ParameterLayouts.Name(o.Candidate.Layout),
                ["remat"] = o.Candidate.Remat.Name,
                ["step_seconds"] = o.Prediction?.StepSeconds,
                ["mfu"] = o.Prediction?.Mfu,
                ["memory_per_device_bytes"] = o.Prediction?.MemoryTotal ?? o.BytesNeeded,
                ["rejected"] = o.Rejected,
            };
            Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["devices"] = devices,
                ["hardware"] = hw.Name,
                ["considered"] = report.Considered,
                ["compiled"] = report.Compiled,
                ["seconds"] = report.Elapsed.TotalSeconds,
                ["ranked"] = report.Ranked.Take(top).Select((o, i) => Row(o, i + 1)).ToList(),
                ["given"] = mine is null ? null : Row(mine, report.Ranked.ToList().IndexOf(mine) is var k and >= 0 ? k + 1 : null),
                ["rejected_count"] = report.Rejected.Count,
            }, new JsonSerializerOptions { WriteIndented = true }));
            return report.Ranked.Count > 0 ? 0 : 1;
        }
        Console.WriteLine(string.Create(Inv, $"searched {report.Considered} plans for {devices:N0} x {hw.Name} in {report.Elapsed.TotalSeconds:F1} s: {report.Compiled} compiled, {report.Ranked.Count} fit, {report.Rejected.Count} rejected"));
        if (report.Ranked.Count == 0)
        {
            Console.WriteLine("no plan fits:");
            foreach (var o in report.Rejected.OrderBy(o => o.BytesNeeded ?? long.MaxValue).Take(top))
                Console.WriteLine(string.Create(Inv, $"  {o.Candidate}: {o.Rejected}{(o.BytesNeeded is { } b ? $" ({b:N0} B needed, {(long)(hw.MemoryBytes * 0.9):N0} B usable)" : "")}"));
            return 1;
        }
        var best = report.Ranked[0];
        // Plain columns (not a table): the reasons are long, and this is read in logs and pipes as much as on terminals.
        var shown = report.Ranked.Take(top).ToList();
        if (mine is not null && !shown.Contains(mine)) shown.Add(mine);
        Console.WriteLine(string.Create(Inv, $"{"#",-11} {"mesh",-30} {"layout",-11} {"remat",-5} {"step",10} {"MFU",6} {"memory",10}  why"));
        foreach (var o in shown)
        {
            var rank = report.Ranked.ToList().IndexOf(o);
            var p = o.Prediction;
            var label = (rank >= 0 ? (rank + 1).ToString(Inv) : "-") + (ReferenceEquals(o, mine) ? " (given)" : "");
            Console.WriteLine(string.Create(Inv,
                $"{label,-11} {o.Candidate.Mesh,-30} {ParameterLayouts.Name(o.Candidate.Layout),-11} {o.Candidate.Remat.Name,-5} {(p is null ? "-" : Time(p.StepSeconds)),10} {(p is null ? "-" : (p.Mfu * 100).ToString("F1", Inv) + "%"),6} {(p is null ? "-" : PlanCommand.Bytes(p.MemoryTotal)),10}  {o.Rejected ?? LayoutSearch.Explain(o, best)}"));
        }
        var reasons = report.Rejected.GroupBy(o => o.Rejected!.StartsWith("does not fit", StringComparison.Ordinal) ? "do not fit in memory" : "cannot be partitioned (a dim does not divide, or similar)");
        foreach (var r in reasons) Console.WriteLine(string.Create(Inv, $"rejected: {r.Count()} plans {r.Key}"));
        return 0;
    }

    // ---- sweep ------------------------------------------------------------------------------------------------------

    private static int RunSweep(string[] paths, Func<string, long, Graph> load, Hardware hw, RematPolicy remat, string? chipsText, string? batchesText,
        string? dtype, string? output, bool json)
    {
        IReadOnlyList<long> chipList = ParseList(chipsText, "--chips") ?? [.. Sweep.DefaultChips];
        IReadOnlyList<long> batchList = ParseList(batchesText, "--batches") ?? [.. Sweep.DefaultBatches];
        List<SweepPoint> points = null!;
        void Go(Action<int, int>? progress) => points = Sweep.Run(paths, load, hw, remat, chipList, batchList, dtype, progress);
        if (!json && !Console.IsOutputRedirected)
            AnsiConsole.Progress().Start(ctx =>
            {
                var task = ctx.AddTask($"sweeping {paths.Length} model(s) on {hw.Name}");
                Go((done, total) => { task.MaxValue = total; task.Value = done; });
            });
        else Go(null);
        var table = Sweep.Table(points);
        var title = $"predicted MFU on {hw.Name} (remat {remat.Name}), palmc simulate --sweep";
        if (output is not null)
        {
            AtomicFile.WriteAllText(output + ".md", table);
            AtomicFile.WriteAllText(output + ".svg", Sweep.Svg(points, title));
        }
        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(points.Select(p => new Dictionary<string, object?>
            {
                ["model"] = p.Model, ["chips"] = p.Chips, ["batch"] = p.Batch, ["mesh"] = p.Mesh?.ToString(),
                ["mfu"] = p.Prediction?.Mfu, ["tokens_per_second"] = p.Prediction?.TokensPerSecond, ["step_seconds"] = p.Prediction?.StepSeconds,
                ["fits"] = p.Prediction?.Fits, ["missing"] = p.Missing,
            }).ToList(), new JsonSerializerOptions { WriteIndented = true }));
        }
        else
        {
            Console.Write(table);
            if (output is not null) Console.WriteLine($"wrote {output}.md and {output}.svg");
        }
        return 0;
    }

    private static List<long>? ParseList(string? text, string name)
    {
        if (text is null) return null;
        var list = new List<long>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            list.Add(long.TryParse(part, NumberStyles.None, Inv, out var v) && v > 0 ? v : throw new UserError($"error: {name}: '{part}' is not a positive integer"));
        return list.Count > 0 ? list : throw new UserError($"error: {name} is empty");
    }
}
