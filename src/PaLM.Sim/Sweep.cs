using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using PaLM.IR;
using PaLM.Passes;
using PaLM.Spmd;

namespace PaLM.Sim;

/// <summary>One point of a scaling sweep: a model on some chips at some batch, its prediction or why there is none.</summary>
public sealed record SweepPoint(string Model, long Chips, long Batch, Mesh? Mesh, Prediction? Prediction, string? Missing);

/// <summary>
/// Scaling tables: predicted MFU and tokens/s of models against chip count and batch size. Each point keeps the
/// model's own layout family (its graph's model-axis size, the paper's "model parallelism within a pod", or the next
/// smaller size the chip count and the model's dims divide by), puts the remaining chips on the data axis and whole
/// pods on the pod axis, and uses one remat policy throughout. A point whose batch does not split over the data
/// axis (fewer sequences than data shards) has no prediction.
/// </summary>
public static class Sweep
{
    public static readonly ImmutableArray<long> DefaultChips = [256, 512, 1024, 2048, 3072, 4096, 6144];
    public static readonly ImmutableArray<long> DefaultBatches = [256, 512, 1024, 2048];

    /// <summary>
    /// Runs the sweep; <paramref name="load"/> compiles a model file with its batch dim resized (so every batch is a
    /// real graph, checked like any other).
    /// </summary>
    public static List<SweepPoint> Run(IReadOnlyList<string> files, Func<string, long, Graph> load, Hardware hw, RematPolicy remat,
        IReadOnlyList<long>? chips = null, IReadOnlyList<long>? batches = null, string? dtype = null, Action<int, int>? progress = null)
    {
        chips ??= DefaultChips;
        batches ??= DefaultBatches;
        var jobs = (from f in files from c in chips from b in batches select (File: f, Chips: c, Batch: b)).ToList();
        var points = new SweepPoint[jobs.Count];
        int done = 0;
        Parallel.For(0, jobs.Count, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, i =>
        {
            var (file, c, b) = jobs[i];
            var model = Path.GetFileNameWithoutExtension(file);
            string? why = null;
            try
            {
                var g = load(file, b);
                // The graph's model-axis size, or the next smaller one the chip count and the model's dims divide by.
                foreach (var m in ModelSizes(g))
                {
                    try
                    {
                        var mesh = MeshFor(g, hw, c, m);
                        var p = Simulator.Predict(g, new SimulationConfig { Hardware = hw, Mesh = mesh, Remat = remat, DType = dtype });
                        points[i] = new SweepPoint(model, c, b, mesh, p, p.Fits ? null : FormattableString.Invariant($"does not fit ({p.MemoryTotal / 1e9:F1} GB > {p.MemoryUsable / 1e9:F1} GB)"));
                        break;
                    }
                    catch (Exception e) when (e is ShardingException or SimulationException or InvalidOperationException)
                    {
                        why ??= e.Message;
                    }
                }
            }
            catch (Exception e) when (e is ShardingException or SimulationException or InvalidOperationException or PaLM.Dsl.DslException)
            {
                why = e.Message;
            }
            points[i] ??= new SweepPoint(model, c, b, null, null, (why ?? "no mesh") + "; no smaller model axis works either");
            progress?.Invoke(Interlocked.Increment(ref done), jobs.Count);
        });
        return [.. points];
    }

    /// <summary>Model-axis sizes to try, largest first: the graph's own, then each smaller one.</summary>
    private static IEnumerable<long> ModelSizes(Graph g)
    {
        for (long m = MeshRoles.Of(g).ModelSize; m >= 1; m--) yield return m;
    }

    /// <summary>
    /// The mesh for <paramref name="chips"/> chips: <paramref name="model"/>-way (default: the graph's) model axis,
    /// whole pods on the pod axis, the rest on data.
    /// </summary>
    public static Mesh MeshFor(Graph g, Hardware hw, long chips, long? model = null)
    {
        var roles = MeshRoles.Of(g);
        long modelSize = model ?? roles.ModelSize;
        long pods = roles.Pod is null ? 1 : (chips + hw.ChipsPerPod - 1) / hw.ChipsPerPod;
        if (chips % (modelSize * pods) != 0)
            throw new SimulationException($"{chips} chips do not divide into {pods} pod(s) x {modelSize}-way model parallelism");
        return roles.Build(pods, chips / modelSize / pods, modelSize);
    }

    /// <summary>The sweep as a Markdown table (one row per model and chip count, MFU and tokens/s per batch).</summary>
    public static string Table(IReadOnlyList<SweepPoint> points)
    {
        var inv = CultureInfo.InvariantCulture;
        var batches = points.Select(p => p.Batch).Distinct().Order().ToList();
        var sb = new StringBuilder();
        sb.Append("| model | chips | mesh |");
        foreach (var b in batches) sb.Append(inv, $" batch {b}: MFU | tokens/s |");
        sb.Append('\n').Append("|---|---:|---|");
        foreach (var _ in batches) sb.Append("---:|---:|");
        sb.Append('\n');
        foreach (var row in points.GroupBy(p => (p.Model, p.Chips)).OrderBy(g => g.Key.Model, StringComparer.Ordinal).ThenBy(g => g.Key.Chips))
        {
            var mesh = row.Select(p => p.Mesh?.ToString()).FirstOrDefault(m => m is not null) ?? "-";
            sb.Append(inv, $"| {row.Key.Model} | {row.Key.Chips} | {mesh} |");
            foreach (var b in batches)
            {
                var p = row.FirstOrDefault(x => x.Batch == b);
                if (p?.Prediction is { } pr && p.Missing is null) sb.Append(inv, $" {pr.Mfu * 100:F1}% | {pr.TokensPerSecond / 1e3:F1}K |");
                else sb.Append(p?.Missing?.StartsWith("does not fit", StringComparison.Ordinal) == true ? " no fit | - |" : " - | - |");
            }
            sb.Append('\n');
        }
        return sb.ToString();
    }

    /// <summary>
    /// An SVG of predicted MFU against chips (log scale), one line per model and batch; points that do not fit or do
    /// not divide are left out.
    /// </summary>
    public static string Svg(IReadOnlyList<SweepPoint> points, string title)
    {
        const int W = 760, H = 420, L = 60, R = 210, T = 40, B = 50;
        var ok = points.Where(p => p.Prediction is not null && p.Missing is null).ToList();
        var chips = points.Select(p => p.Chips).Distinct().Order().ToList();
        double lx0 = Math.Log2(chips.First()), lx1 = Math.Log2(Math.Max(chips.Last(), chips.First() * 2));
        double hi = Math.Max(0.1, Math.Ceiling((ok.Count == 0 ? 0.5 : ok.Max(p => p.Prediction!.Mfu)) * 10) / 10);
        double X(long c) => L + (Math.Log2(c) - lx0) / (lx1 - lx0) * (W - L - R);
        double Y(double mfu) => T + (hi - mfu) / hi * (H - T - B);
        string F(double v) => v.ToString("F1", CultureInfo.InvariantCulture);
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        sb.Append(CultureInfo.InvariantCulture, $"<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n");
        sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{(W - R + L) / 2}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{Escape(title)}</text>\n");
        sb.Append(CultureInfo.InvariantCulture, $"<line x1=\"{L}\" y1=\"{H - B}\" x2=\"{W - R}\" y2=\"{H - B}\" stroke=\"black\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{H - B}\" stroke=\"black\"/>\n");
        for (int i = 0; i <= 5; i++)
        {
            var v = hi * i / 5;
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{L - 6}\" y=\"{F(Y(v) + 4)}\" text-anchor=\"end\">{v * 100:F0}%</text><line x1=\"{L}\" y1=\"{F(Y(v))}\" x2=\"{W - R}\" y2=\"{F(Y(v))}\" stroke=\"#eee\"/>\n");
        }
        foreach (var c in chips)
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(X(c))}\" y=\"{H - B + 16}\" text-anchor=\"middle\">{c}</text>\n");
        sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{(L + W - R) / 2}\" y=\"{H - 12}\" text-anchor=\"middle\">chips (log scale)</text>");
        sb.Append(CultureInfo.InvariantCulture, $"<text x=\"16\" y=\"{(T + H - B) / 2}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {(T + H - B) / 2})\">predicted MFU</text>\n");
        string[] colors = ["#2565ae", "#c33", "#2a9d3a", "#9b59b6", "#e67e22", "#16a085", "#7f8c8d", "#d35400", "#2c3e50", "#8e44ad", "#27ae60", "#c0392b"];
        int k = 0;
        foreach (var series in ok.GroupBy(p => (p.Model, p.Batch)).OrderBy(g => g.Key.Model, StringComparer.Ordinal).ThenBy(g => g.Key.Batch))
        {
            var color = colors[k % colors.Length];
            var dash = (k / colors.Length) % 2 == 1 ? " stroke-dasharray=\"5 3\"" : "";
            var pts = series.OrderBy(p => p.Chips).ToList();
            sb.Append(CultureInfo.InvariantCulture, $"<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"{dash} points=\"");
            foreach (var p in pts) sb.Append(F(X(p.Chips))).Append(',').Append(F(Y(p.Prediction!.Mfu))).Append(' ');
            sb.Append("\"/>\n");
            foreach (var p in pts) sb.Append(CultureInfo.InvariantCulture, $"<circle cx=\"{F(X(p.Chips))}\" cy=\"{F(Y(p.Prediction!.Mfu))}\" r=\"2.5\" fill=\"{color}\"/>");
            int ly = T + 14 * k;
            sb.Append(CultureInfo.InvariantCulture, $"\n<line x1=\"{W - R + 12}\" y1=\"{ly}\" x2=\"{W - R + 32}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text x=\"{W - R + 36}\" y=\"{ly + 4}\">{Escape(series.Key.Model)}, batch {series.Key.Batch}</text>\n");
            k++;
        }
        sb.Append("</svg>\n");
        return sb.ToString();
    }

    private static string Escape(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;");
}
