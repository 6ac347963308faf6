using System.Globalization;
using System.Text;
using PaLM.Runtime.Training;

namespace PaLM.Cli.Commands;

/// <summary>Writes a training run's loss curve as CSV (full precision, for comparisons) and as an SVG plot.</summary>
internal static class LossCurve
{
    public static void WriteCsv(string path, IReadOnlyList<StepReport> steps)
    {
        var sb = new StringBuilder("step,loss,grad_norm,lr,seconds,tokens_per_second\n");
        foreach (var s in steps)
            sb.Append(string.Create(CultureInfo.InvariantCulture, $"{s.Step},{s.Loss:R},{s.GradNorm:R},{s.LearningRate:R},{s.Seconds:R},{s.TokensPerSecond:F1}\n"));
        IR.AtomicFile.WriteAllText(path, sb.ToString());
    }

    /// <summary>A self-contained SVG line plot of loss against step, with ln(vocab) marked when given.</summary>
    public static void WriteSvg(string path, IReadOnlyList<StepReport> steps, string title, double? reference = null)
    {
        const int W = 640, H = 360, L = 60, R = 20, T = 40, B = 45;
        var maxStep = Math.Max(1, steps.Max(s => s.Step));
        var minStep = steps.Min(s => s.Step);
        var hi = Math.Max(steps.Max(s => s.Loss), reference ?? double.MinValue);
        var lo = Math.Min(0, steps.Min(s => s.Loss));
        double X(double step) => L + (step - minStep) / Math.Max(1, maxStep - minStep) * (W - L - R);
        double Y(double loss) => T + (hi - loss) / (hi - lo) * (H - T - B);
        string F(double v) => v.ToString("F1", CultureInfo.InvariantCulture);
        var sb = new StringBuilder();
        sb.Append($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        sb.Append($"<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n");
        sb.Append($"<text x=\"{W / 2}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{Escape(title)}</text>\n");
        sb.Append($"<line x1=\"{L}\" y1=\"{H - B}\" x2=\"{W - R}\" y2=\"{H - B}\" stroke=\"black\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{H - B}\" stroke=\"black\"/>\n");
        for (int i = 0; i <= 5; i++)
        {
            var v = lo + (hi - lo) * i / 5;
            sb.Append($"<text x=\"{L - 6}\" y=\"{F(Y(v) + 4)}\" text-anchor=\"end\">{v.ToString("F2", CultureInfo.InvariantCulture)}</text>");
            sb.Append($"<line x1=\"{L}\" y1=\"{F(Y(v))}\" x2=\"{W - R}\" y2=\"{F(Y(v))}\" stroke=\"#eee\"/>\n");
            var st = minStep + (maxStep - minStep) * i / 5.0;
            sb.Append($"<text x=\"{F(X(st))}\" y=\"{H - B + 16}\" text-anchor=\"middle\">{st.ToString("F0", CultureInfo.InvariantCulture)}</text>\n");
        }
        sb.Append($"<text x=\"{(L + W - R) / 2}\" y=\"{H - 8}\" text-anchor=\"middle\">step</text>");
        sb.Append($"<text x=\"16\" y=\"{(T + H - B) / 2}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {(T + H - B) / 2})\">loss (nats/byte)</text>\n");
        if (reference is { } r)
            sb.Append($"<line x1=\"{L}\" y1=\"{F(Y(r))}\" x2=\"{W - R}\" y2=\"{F(Y(r))}\" stroke=\"#c33\" stroke-dasharray=\"4 3\"/><text x=\"{W - R - 4}\" y=\"{F(Y(r) - 5)}\" text-anchor=\"end\" fill=\"#c33\">ln(vocab) = {r.ToString("F3", CultureInfo.InvariantCulture)}</text>\n");
        sb.Append("<polyline fill=\"none\" stroke=\"#2565ae\" stroke-width=\"1.5\" points=\"");
        foreach (var s in steps) sb.Append(F(X(s.Step))).Append(',').Append(F(Y(s.Loss))).Append(' ');
        sb.Append("\"/>\n</svg>\n");
        IR.AtomicFile.WriteAllText(path, sb.ToString());
    }

    private static string Escape(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;");
}
