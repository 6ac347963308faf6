namespace PaLM.Sim;

/// <summary>One figure PaLM published beside palmc's prediction of it.</summary>
public sealed record PaperRow(string Metric, double Predicted, double Published, string Format)
{
    /// <summary>(predicted - published) / published.</summary>
    public double Gap => (Predicted - Published) / Published;
}

/// <summary>
/// PaLM 540B's published training figures (Chowdhery et al. 2022, section 4 and appendix B; see
/// ../shared/docs/palm-reference.md), for checking the cost model against. They are never inputs to the model.
/// </summary>
public static class PaperComparison
{
    public const double Mfu = 0.462;
    public const double Hfu = 0.578;
    public const double TokensPerSecond = 238.3e3;
    public const double CrossPodBytesPerHost = 1.3e9;
    public const double TwoPodScaling = 1.95;

    /// <summary>Whether <paramref name="p"/> is the paper's setting: 540B on TPU v4, its pod axis across two pods.</summary>
    public static bool Applies(Prediction p) =>
        p.Graph.StartsWith("palm-540b", StringComparison.Ordinal) && p.Hardware.Name == "tpu-v4" && p.Pods == 2
        && p.Mesh.HasAxis("pod") && p.Mesh.SizeOf("pod") == 2;   // the pod axis is what spans the two pods

    /// <summary>
    /// The side by side. <paramref name="onePod"/> is the same plan on one pod with half the batch (the paper's weak
    /// scaling: each pod keeps its batch), whose throughput the two-pod throughput is divided by.
    /// </summary>
    public static List<PaperRow> Rows(Prediction twoPods, Prediction onePod) =>
    [
        new("MFU", twoPods.Mfu, Mfu, "P1"),
        new("HFU", twoPods.Hfu, Hfu, "P1"),
        new("tokens/s", twoPods.TokensPerSecond, TokensPerSecond, "N0"),
        new("cross-pod bytes per host per step", twoPods.Cost.CrossPodBytesPerHost, CrossPodBytesPerHost, "N0"),
        new("two pods / one pod throughput", twoPods.TokensPerSecond / onePod.TokensPerSecond, TwoPodScaling, "F3"),
    ];
}
