using PaLM.Dsl;
using PaLM.IR;
using PaLM.Passes;

namespace PaLM.Perf.Tests;

/// <summary>
/// The FLOP accounting of a training step against hand-computed palm-tiny figures (B=8, S=16, d_model=64, 4 heads of
/// 16, d_ff=256, vocab 256, 2 layers): each einsum is 2·(product of its dims), the backward pass runs two einsums of
/// the same size per forward einsum, and rematerialization adds exactly the recomputed ops.
/// </summary>
public sealed class StepFlopsTests
{
    private static readonly Lazy<Graph> s_tiny = new(() => Frontend.CompileFile(TestPaths.Graph("palm-tiny")));

    private static StepFlops Of(string remat, bool fuse = false) =>
        StepFlops.Of(TrainingCompiler.Compile(s_tiny.Value, null, new TrainingConfig { Remat = RematPolicy.Parse(remat), Fuse = fuse }));

    // Per layer: q and attention-out 2·128·64·64 each; k and v 2·128·64·16; scores and probs·v 2·8·4·16·16·16;
    // gate, up and down 2·128·64·256. Plus the logits 2·128·64·256 once.
    private const long PerLayerMatmul = 2 * 1_048_576 + 4 * 262_144 + 3 * 4_194_304;
    private const long ForwardMatmul = 2 * PerLayerMatmul + 4_194_304;

    [Fact]
    public void MatmulFlopsAreThreeTimesTheForwardEinsums()
    {
        var f = Of("none");
        Assert.Equal(35_651_584, ForwardMatmul);
        Assert.Equal(3 * ForwardMatmul, f.Matmul);
        Assert.Equal(3 * ForwardMatmul, f.ByOp["einsum"]);
        Assert.Equal(0, f.Recomputed);
        Assert.Equal(f.Forward + f.Backward + f.Optimizer, f.Executed);
    }

    [Fact]
    public void ModelFlopsFollowPalmAppendixB()
    {
        var f = Of("none");
        // N = embed 256·64 + per layer (ln 64 + q 64·64 + k, v 64·16 + o 64·64 + gate, up, down 64·256) + ln_final 64.
        long n = 256 * 64 + 2 * (64 + 4096 + 2 * 1024 + 4096 + 3 * 16384) + 64;
        Assert.Equal(n, f.Parameters);
        Assert.Equal(6 * n + 12 * 2 * 4 * 16 * 16, f.ModelFlopsPerToken);
        Assert.Equal(128, f.TokensPerStep);
        Assert.Equal(f.ModelFlopsPerToken * 128, f.ModelFlopsPerStep);
        Assert.Equal(f.ModelFlopsPerStep, f.HardwareFlopsPerStep);
        Assert.Equal(2, f.Layers);
    }

    [Fact]
    public void RematerializationAddsExactlyWhatItRecomputes()
    {
        var none = Of("none");
        var full = Of("full");
        var dots = Of("dots");
        // Dots keeps the weight matmuls' outputs and recomputes the rest (the attention core's two einsums among it).
        // Full remat recomputes each layer's forward up to what the backward reads: everything but the two branch
        // outputs' einsums (attention out, MLP down), whose results no VJP needs.
        Assert.True(full.Recomputed >= 2 * (PerLayerMatmul - 1_048_576 - 4_194_304), $"full recomputed {full.Recomputed}");
        Assert.True(full.Recomputed < none.Forward, $"full recomputed {full.Recomputed} of forward {none.Forward}");
        Assert.True(dots.Recomputed > 0 && dots.Recomputed < full.Recomputed, $"dots {dots.Recomputed}, full {full.Recomputed}");
        Assert.Equal(none.Forward, full.Forward);
        Assert.Equal(none.Backward, full.Backward);
        Assert.Equal(none.Executed + full.Recomputed, full.Executed);
        Assert.Equal(full.ModelFlopsPerStep + full.Recomputed, full.HardwareFlopsPerStep);
        Assert.Equal(none.ModelFlopsPerStep, full.ModelFlopsPerStep);
        Assert.Equal(full.Recomputed / 2, full.PerLayer["recomputed"]);
    }

    [Fact]
    public void PerLayerCountsSplitTheLoops()
    {
        var f = Of("none");
        // The forward loop body's einsums per layer, and the backward's twice that, plus elementwise work.
        Assert.True(f.PerLayer["forward"] >= PerLayerMatmul && f.PerLayer["forward"] < PerLayerMatmul * 11 / 10, $"{f.PerLayer["forward"]}");
        Assert.True(f.PerLayer["backward"] >= 2 * PerLayerMatmul, $"{f.PerLayer["backward"]}");
    }
}
