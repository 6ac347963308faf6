using System.Diagnostics;
using PaLM.IR;

namespace PaLM.Dsl.Tests;

/// <summary>The shipped graphs compile, and their sizes and costs are PaLM's.</summary>
public class GraphFileTests
{
    public static TheoryData<string> GraphFiles()
    {
        var data = new TheoryData<string>();
        foreach (var f in TestPaths.TopLevelGraphs) data.Add(Path.GetFileName(f));
        return data;
    }

    [Fact]
    public void The_graphs_folder_has_the_five_models()
    {
        Assert.Equal(new[] { "palm-540b.palm", "palm-62b.palm", "palm-8b.palm", "palm-cpu.palm", "palm-tiny.palm" },
            TestPaths.TopLevelGraphs.Select(Path.GetFileName).ToArray());
    }

    [Theory]
    [MemberData(nameof(GraphFiles))]
    public void Every_graph_compiles(string file)
    {
        var g = Frontend.CompileFile(Path.Combine(TestPaths.Graphs, file));
        Assert.Equal(Path.GetFileNameWithoutExtension(file), g.Name);
        Assert.Equal(new[] { "loss" }, g.OutputNames.ToArray());
        Assert.Equal(new[] { "tokens", "targets" }, g.Inputs.Select(a => a.Value.Name).ToArray());
        Assert.Equal(10, g.Parameters.Count());
        var repeat = Assert.Single(g.Body.Nodes, n => n.Op.Name == "repeat");
        Assert.Equal(g.DimsByName["layers"].Size, ControlOps.Count(repeat, g.DimsByName));
        Verifier.Verify(g);
    }

    /// <summary>PaLM's table 1 sizes; parameters N = V·D + L·(D + 2·H·K·D + 2·D·K + 3·D·F) + D.</summary>
    [Theory]
    [InlineData("palm-8b", 32, 16, 256, 4096, 16384, 256000, 2048, 8.63e9)]
    [InlineData("palm-62b", 64, 32, 256, 8192, 32768, 256000, 2048, 62.50e9)]
    [InlineData("palm-540b", 118, 48, 256, 18432, 73728, 256000, 2048, 540.35e9)]
    public void Parameter_count_and_flops_are_the_papers(string name, long layers, long heads, long headDim, long dModel,
        long dFf, long vocab, long seq, double paperParams)
    {
        var g = Frontend.CompileFile(TestPaths.Graph(name));
        var dims = g.DimsByName;
        Assert.Equal((layers, heads, headDim, dModel, dFf, vocab, seq),
            (dims["layers"].Size, dims["heads"].Size, dims["head_dim"].Size, dims["d_model"].Size, dims["d_ff"].Size, dims["vocab"].Size, dims["seq"].Size));

        var stats = Stats.Compute(g);
        long perLayer = dModel                         // layer norm scale
            + dModel * heads * headDim                 // W_q
            + 2 * dModel * headDim                     // W_k, W_v (multi-query: one head)
            + heads * headDim * dModel                 // W_o
            + 3 * dModel * dFf;                        // SwiGLU: W_gate, W_up, W_down
        long n = vocab * dModel + layers * perLayer + dModel;
        Assert.Equal(n, stats.Parameters);
        Assert.True(Math.Abs(stats.Parameters - paperParams) / paperParams < 0.0005,
            $"{name}: {stats.Parameters:N0} parameters, paper {paperParams:N0}");

        Assert.Equal(layers, stats.Layers);
        Assert.Equal(6 * n + 12 * layers * heads * headDim * seq, stats.FlopsPerTokenPalm);
    }

    [Fact]
    public void Palm_cpu_forward_flops_are_mostly_matmuls()
    {
        var s = Stats.Compute(Frontend.CompileFile(TestPaths.Graph("palm-cpu")));
        Assert.True(s.MatmulFraction >= 0.9, $"matmul share {s.MatmulFraction:P2}");
        Assert.True(s.ForwardMatmulFlops < s.ForwardFlops);
        Assert.Equal(4 * 512, s.TokensPerStep);
    }

    [Fact]
    public void Palm_540b_parses_and_verifies_quickly()
    {
        var path = TestPaths.Graph("palm-540b");
        var best = TimeSpan.MaxValue;
        for (int i = 0; i < 3; i++)
        {
            var sw = Stopwatch.StartNew();
            var g = Frontend.CompileFile(path);
            Verifier.Verify(g);
            sw.Stop();
            if (sw.Elapsed < best) best = sw.Elapsed;
        }
        Assert.True(best < TimeSpan.FromSeconds(2), $"best of 3: {best.TotalSeconds:F2} s");
    }

    [Fact]
    public void Dims_are_order_free_across_includes()
    {
        // arch/palm.palm declares kseq = seq before the includer's seq is seen; the includer's dims come first.
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        Assert.Equal(g.DimsByName["seq"].Size, g.DimsByName["kseq"].Size);
        Assert.Equal("kseq", g.Dims[^1].Name);
    }
}
