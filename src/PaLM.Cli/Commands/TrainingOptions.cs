using System.CommandLine;
using PaLM.IR;
using PaLM.Passes;

namespace PaLM.Cli.Commands;

/// <summary>The options every command that compiles a training step shares: remat policy, fusion, optimizer settings.</summary>
internal sealed class TrainingOptions
{
    public Option<string> Remat { get; } = new("--remat")
    {
        Description = "rematerialization policy: none, full (keep each layer's input), dots (keep weight-matmul outputs), palm (keep each layer's input fully sharded), auto (per layer, to fit --memory-budget)",
        DefaultValueFactory = _ => "none",
    };

    public Option<string?> MemoryBudget { get; } = new("--memory-budget") { Description = "per-device memory budget for --remat auto, e.g. 512MiB or 2GiB" };

    public Option<bool> NoFuse { get; } = new("--no-fuse") { Description = "skip the parallel-layer fusion pass" };

    public Option<double> Lr { get; } = new("--lr") { Description = "peak learning rate (lr = min(peak, 1/sqrt(step)))", DefaultValueFactory = _ => new TrainOptions().PeakLearningRate };

    public Option<double> Beta1 { get; } = new("--beta1") { Description = "momentum", DefaultValueFactory = _ => new TrainOptions().Beta1 };

    public Option<double> Beta2Decay { get; } = new("--beta2-decay") { Description = "beta2 = 1 - step^-DECAY", DefaultValueFactory = _ => new TrainOptions().Beta2Decay };

    public Option<double> ClipNorm { get; } = new("--clip-norm") { Description = "global gradient-norm clipping threshold (0: off)", DefaultValueFactory = _ => new TrainOptions().ClipNorm };

    public Option<double> UpdateClip { get; } = new("--update-clip") { Description = "Adafactor update clipping threshold (0: off)", DefaultValueFactory = _ => new TrainOptions().UpdateClip };

    public Option<double> WeightDecayPower { get; } = new("--weight-decay-power") { Description = "weight decay lr^POWER per step (negative: off)", DefaultValueFactory = _ => new TrainOptions().WeightDecayPower };

    public IEnumerable<Option> All => [Remat, MemoryBudget, NoFuse, Lr, Beta1, Beta2Decay, ClipNorm, UpdateClip, WeightDecayPower];

    public void AddTo(Command cmd)
    {
        foreach (var o in All) cmd.Options.Add(o);
    }

    /// <summary>Compiles the training step of <paramref name="g"/> for the mesh with these options (auto remat searched here).</summary>
    public CompiledTraining Compile(System.CommandLine.ParseResult r, Graph g, string? meshText)
    {
        // What these stages refuse (no 'loss' output, a budget nothing fits, nested loops) is the user's to fix.
        try { return CompileCore(r, g, meshText); }
        catch (Exception e) when (e is InvalidOperationException or NotSupportedException) { throw new UserError($"error: {e.Message}"); }
    }

    private CompiledTraining CompileCore(System.CommandLine.ParseResult r, Graph g, string? meshText)
    {
        var mesh = Common.ParseMesh(meshText);
        var optimizer = new TrainOptions
        {
            PeakLearningRate = Positive(r.GetValue(Lr), "--lr"),
            Beta1 = r.GetValue(Beta1),
            Beta2Decay = r.GetValue(Beta2Decay),
            ClipNorm = r.GetValue(ClipNorm),
            UpdateClip = r.GetValue(UpdateClip),
            WeightDecayPower = r.GetValue(WeightDecayPower),
        };
        if (optimizer.Beta1 is < 0 or >= 1) throw new UserError("error: --beta1 must be in [0, 1)");
        var config = new TrainingConfig { Fuse = !r.GetValue(NoFuse), Optimizer = optimizer };
        var remat = r.GetValue(Remat)!;
        if (remat == "auto")
        {
            var budget = r.GetValue(MemoryBudget) is { } text ? ParseBytes(text)
                : throw new UserError("error: --remat auto needs --memory-budget (per-device bytes, e.g. 512MiB)");
            return AutoRemat.Compile(g, mesh, config, budget).Compiled;
        }
        if (r.GetValue(MemoryBudget) is not null) throw new UserError("error: --memory-budget applies to --remat auto only");
        RematPolicy policy;
        try { policy = RematPolicy.Parse(remat); }
        catch (ArgumentException e) { throw new UserError($"error: --remat: {e.Message}"); }
        return TrainingCompiler.Compile(g, mesh, config with { Remat = policy });
    }

    private static double Positive(double v, string name) => v > 0 ? v : throw new UserError($"error: {name} must be positive");

    /// <summary>Parses 1024, 512KiB, 1.5GiB, 2GB (decimal units are powers of 1000).</summary>
    public static long ParseBytes(string text)
    {
        var t = text.Trim();
        (string Suffix, double Scale)[] units = [("KiB", 1L << 10), ("MiB", 1L << 20), ("GiB", 1L << 30), ("TiB", 1L << 40), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("B", 1)];
        foreach (var (suffix, scale) in units)
        {
            if (!t.EndsWith(suffix, StringComparison.OrdinalIgnoreCase)) continue;
            if (double.TryParse(t[..^suffix.Length].Trim(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v) && v > 0)
                return (long)(v * scale);
            break;
        }
        if (long.TryParse(t, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) && n > 0) return n;
        throw new UserError($"error: '{text}' is not a byte size (e.g. 512MiB, 2GiB, 1000000)");
    }
}
