using System.Collections.Immutable;
using System.Globalization;
using System.Text.Json;

namespace PaLM.Sim;

/// <summary>How the chips of one pod (TPU) or node (GPU) are wired: the fast interconnect.</summary>
/// <param name="Topology"><c>torus</c> (TPU ICI: each chip links to its neighbours along each torus dim) or
/// <c>switch</c> (NVSwitch: every GPU reaches every other at its full link bandwidth).</param>
/// <param name="TorusDims">Dims of the torus (3 for TPU v4); unused for a switch.</param>
/// <param name="MaxRing">Longest ring along one torus dim (16 in a 4096-chip v4 pod).</param>
/// <param name="LinksPerChip">Links out of one chip.</param>
/// <param name="LinkBandwidth">Bytes/s one way over one link.</param>
/// <param name="Latency">Seconds per hop of a collective step (the α of α-β).</param>
public sealed record Interconnect(string Topology, int TorusDims, int MaxRing, int LinksPerChip, double LinkBandwidth, double Latency)
{
    public bool IsTorus => Topology == "torus";
}

/// <summary>The network between pods or nodes (TPU DCN, GPU InfiniBand): bandwidth per host, shared by its chips.</summary>
public sealed record Network(double BandwidthPerHost, double Latency);

/// <summary>
/// One kind of accelerator as the cost model sees it: peak FLOP/s per dtype, memory capacity and bandwidth, how many
/// chips share a host, how many share the fast interconnect (a pod or node), and the two networks. Figures come from
/// datasheets (the catalog cites them) or, for <c>cpu</c>, from palmc's own measurement.
/// </summary>
public sealed record Hardware(
    string Name,
    string Description,
    ImmutableSortedDictionary<string, double> PeakFlops,
    string DefaultDType,
    double MatmulEfficiency,
    long MemoryBytes,
    double MemoryBandwidth,
    int ChipsPerHost,
    int ChipsPerPod,
    Interconnect Interconnect,
    Network Network,
    ImmutableArray<string> Sources,
    string Origin)
{
    /// <summary>Peak FLOP/s in <paramref name="dtype"/>; a dtype the datasheet does not list is a clear error, never a guess.</summary>
    public double Peak(string dtype) => PeakFlops.TryGetValue(dtype, out var p)
        ? p
        : throw new SimulationException($"hardware '{Name}' has no peak for dtype '{dtype}' (it lists {string.Join(", ", PeakFlops.Keys)})");
}

/// <summary>A simulation input the model cannot take (unknown hardware, a mesh the cluster cannot hold, a bad catalog file).</summary>
public sealed class SimulationException(string message) : Exception(message);

/// <summary>
/// The hardware palmc knows: the built-in catalog (Hardware/catalog.json, embedded), devices users add in files of the
/// same shape (<c>--hardware-file</c>, or the paths in <c>PALMC_HARDWARE</c> separated by ':'), and <c>cpu</c>, this
/// machine, measured when asked for. A later file's device replaces an earlier one of the same name.
/// </summary>
public sealed class HardwareCatalog
{
    private readonly Dictionary<string, Hardware> _devices = new(StringComparer.OrdinalIgnoreCase);
    private readonly Func<Hardware>? _measureCpu;
    private Hardware? _cpu;

    private HardwareCatalog(Func<Hardware>? measureCpu) => _measureCpu = measureCpu;

    /// <summary>The environment variable listing extra catalog files.</summary>
    public const string EnvironmentVariable = "PALMC_HARDWARE";

    /// <summary>
    /// The built-in catalog plus <paramref name="files"/> and the files named by <see cref="EnvironmentVariable"/>.
    /// <paramref name="measureCpu"/> builds the <c>cpu</c> entry on first use (it measures, so it is not run unless asked).
    /// </summary>
    public static HardwareCatalog Load(IEnumerable<string>? files = null, Func<Hardware>? measureCpu = null, bool readEnvironment = true)
    {
        var c = new HardwareCatalog(measureCpu);
        using (var s = typeof(HardwareCatalog).Assembly.GetManifestResourceStream("PaLM.Sim.catalog.json")
            ?? throw new InvalidOperationException("the built-in hardware catalog is missing from PaLM.Sim"))
        using (var r = new StreamReader(s))
            c.AddText(r.ReadToEnd(), "built-in catalog");
        var extra = new List<string>();
        if (readEnvironment && Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } env)
            extra.AddRange(env.Split(':', StringSplitOptions.RemoveEmptyEntries));
        if (files is not null) extra.AddRange(files);
        foreach (var f in extra)
        {
            if (!File.Exists(f)) throw new SimulationException($"{f}: error: no such hardware file");
            c.AddText(File.ReadAllText(f), f);
        }
        return c;
    }

    /// <summary>Every known device name (<c>cpu</c> included when it can be measured), sorted.</summary>
    public IReadOnlyList<string> Names =>
        [.. _devices.Keys.Concat(_measureCpu is not null && !_devices.ContainsKey("cpu") ? ["cpu"] : []).Order(StringComparer.Ordinal)];

    /// <summary>The device called <paramref name="name"/>; an unknown name lists the known ones.</summary>
    public Hardware Get(string name)
    {
        if (_devices.TryGetValue(name, out var h)) return h;
        if (string.Equals(name, "cpu", StringComparison.OrdinalIgnoreCase) && _measureCpu is not null)
            return _cpu ??= _measureCpu();
        throw new SimulationException($"unknown hardware '{name}' (known: {string.Join(", ", Names)}; add one with --hardware-file, see docs/simulation.md)");
    }

    /// <summary>Adds the devices of one catalog text (<c>{"devices": [...]}</c> or a single device object).</summary>
    public void AddText(string json, string origin)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }); }
        catch (JsonException e) { throw new SimulationException($"{origin}: error: not valid JSON: {e.Message}"); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind == JsonValueKind.Object && root.TryGetProperty("devices", out var list))
            {
                if (list.ValueKind != JsonValueKind.Array) throw new SimulationException($"{origin}: error: 'devices' must be an array");
                foreach (var d in list.EnumerateArray()) Add(Parse(d, origin));
            }
            else if (root.ValueKind == JsonValueKind.Object) Add(Parse(root, origin));
            else throw new SimulationException($"{origin}: error: expected a device object or {{\"devices\": [...]}}");
        }
    }

    private void Add(Hardware h) => _devices[h.Name] = h;

    private static Hardware Parse(JsonElement e, string origin)
    {
        string name = e.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString()! : "";
        string where = $"{origin}: device '{(name.Length > 0 ? name : "?")}'";
        if (name.Length == 0) throw new SimulationException($"{where}: error: missing 'name'");
        JsonElement Need(JsonElement o, string key, string path) =>
            o.TryGetProperty(key, out var v) ? v : throw new SimulationException($"{where}: error: missing '{path}{key}'");
        int Int(JsonElement o, string key, string path = "", int min = 1)
        {
            var x = Num(o, key, path);
            if (x != Math.Floor(x) || x < min || x > int.MaxValue)
                throw new SimulationException($"{where}: error: '{path}{key}' must be a whole number of at least {min}, got {x.ToString(CultureInfo.InvariantCulture)}");
            return (int)x;
        }
        string? Str(JsonElement o, string key, string path = "")
        {
            if (!o.TryGetProperty(key, out var v)) return null;
            return v.ValueKind == JsonValueKind.String ? v.GetString() : throw new SimulationException($"{where}: error: '{path}{key}' must be a string");
        }
        JsonElement Obj(JsonElement o, string key)
        {
            var v = Need(o, key, "");
            return v.ValueKind == JsonValueKind.Object ? v : throw new SimulationException($"{where}: error: '{key}' must be an object");
        }
        double Num(JsonElement o, string key, string path = "", double? fallback = null, bool positive = true)
        {
            if (!o.TryGetProperty(key, out var v))
                return fallback ?? throw new SimulationException($"{where}: error: missing '{path}{key}'");
            if (v.ValueKind != JsonValueKind.Number) throw new SimulationException($"{where}: error: '{path}{key}' must be a number");
            var x = v.GetDouble();
            if (positive && !(x > 0)) throw new SimulationException($"{where}: error: '{path}{key}' must be positive, got {x.ToString(CultureInfo.InvariantCulture)}");
            return x;
        }
        var peaks = ImmutableSortedDictionary.CreateBuilder<string, double>(StringComparer.Ordinal);
        var pf = Need(e, "peak_flops", "");
        if (pf.ValueKind != JsonValueKind.Object) throw new SimulationException($"{where}: error: 'peak_flops' must map dtype to FLOP/s");
        foreach (var p in pf.EnumerateObject()) peaks[p.Name] = Num(pf, p.Name, "peak_flops.");
        if (peaks.Count == 0) throw new SimulationException($"{where}: error: 'peak_flops' lists no dtype");
        var dtype = Str(e, "default_dtype") ?? peaks.Keys.First();
        if (!peaks.ContainsKey(dtype)) throw new SimulationException($"{where}: error: default_dtype '{dtype}' has no entry in peak_flops");
        var eff = Num(e, "matmul_efficiency", fallback: 0.8);
        if (eff > 1) throw new SimulationException($"{where}: error: 'matmul_efficiency' is a fraction of peak, at most 1");
        var ici = Obj(e, "interconnect");
        var topology = Str(ici, "topology", "interconnect.") ?? "";
        if (topology is not ("torus" or "switch")) throw new SimulationException($"{where}: error: 'interconnect.topology' must be \"torus\" or \"switch\"");
        var torusDims = topology == "torus" ? Int(ici, "torus_dims", "interconnect.") : 0;
        var maxRing = topology == "torus" ? Int(ici, "max_ring", "interconnect.", min: 2) : 0;
        var net = Obj(e, "network");
        var chipsPerHost = Int(e, "chips_per_host");
        var chipsPerPod = Int(e, "chips_per_pod");
        if (chipsPerPod % chipsPerHost != 0) throw new SimulationException($"{where}: error: chips_per_pod ({chipsPerPod}) must be a multiple of chips_per_host ({chipsPerHost})");
        var sources = e.TryGetProperty("sources", out var s) && s.ValueKind == JsonValueKind.Array
            ? s.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()! : x.ToString()).ToImmutableArray()
            : [];
        return new Hardware(
            name,
            Str(e, "description") ?? name,
            peaks.ToImmutable(), dtype, eff,
            (long)Num(e, "memory_bytes"), Num(e, "memory_bandwidth"),
            chipsPerHost, chipsPerPod,
            new Interconnect(topology, torusDims, maxRing, Int(ici, "links_per_chip", "interconnect."), Num(ici, "link_bandwidth", "interconnect."),
                Num(ici, "latency_seconds", "interconnect.", fallback: 1e-6)),
            new Network(Num(net, "bandwidth_per_host", "network."), Num(net, "latency_seconds", "network.", fallback: 1e-5)),
            sources, origin);
    }

    /// <summary>Bytes per element of a dtype name the catalog uses.</summary>
    public static int DTypeBytes(string dtype) => dtype switch
    {
        "f64" => 8,
        "f32" or "tf32" => 4,
        "bf16" or "f16" => 2,
        "fp8" => 1,
        _ => throw new SimulationException($"unknown dtype '{dtype}' (f64, f32, tf32, bf16, f16, fp8)"),
    };
}
