using PaLM.Dsl;

namespace PaLM.IR.Tests;

public class StatsTests
{
    [Fact]
    public void Einsum_flops_of_a_matmul_are_2MNK()
    {
        const long m = 3, k = 5, n = 7;
        var g = Frontend.CompileText("mm.palm", $"dim m = {m}, k = {k}, n = {n}\ninput a: f32[m, k]\ninput w: f32[k, n]\ny = einsum(a[m, k], w[k, n] -> [m, n])\noutput y\n");
        var node = Assert.Single(g.Body.Nodes);
        Assert.Equal(2 * m * n * k, node.Op.Flops(node));
        var s = Stats.Compute(g);
        Assert.Equal(2 * m * n * k, s.ForwardFlops);
        Assert.Equal(2 * m * n * k, s.ForwardMatmulFlops);
        Assert.Equal(1.0, s.MatmulFraction);
        Assert.Equal(0, s.Parameters);
        Assert.Equal(0, s.Layers);
        Assert.Null(s.FlopsPerTokenPalm); // no heads/head_dim/seq dims
    }

    [Fact]
    public void Repeat_bodies_are_counted_count_times()
    {
        const long m = 3, k = 5, layers = 4, inner = 2;
        var text = $$"""
            dim m = {{m}}, k = {{k}}, k2 = {{k}}, layers = {{layers}}, inner = {{inner}}
            input a: f32[m, k]
            h = neg(a)
            repeat layers {
              param w: f32[k, k2] = normal(0.1)
              h = einsum(h[m, k2], w[k2, k] -> [m, k])
              repeat inner {
                h = tanh(h)
              }
            }
            output h
            """;
        var g = Frontend.CompileText("rep.palm", text);
        var s = Stats.Compute(g);
        long neg = m * k, matmul = 2 * m * k * k, tanh = m * k;
        Assert.Equal(matmul * layers, s.ForwardMatmulFlops);
        Assert.Equal(neg + layers * (matmul + inner * tanh), s.ForwardFlops);
        Assert.Equal(layers, s.Layers);
        Assert.Equal(layers * k * k, s.Parameters);

        // The body is stored once, whatever the count.
        var rep = Assert.Single(g.Body.Nodes, nd => nd.Op.Name == "repeat");
        Assert.Equal(1, rep.Regions[0].Nodes.Count(nd => nd.Op.Name == "einsum"));
    }

    [Fact]
    public void Tokens_per_step_come_from_the_tokens_input()
    {
        var g = Frontend.CompileText("t.palm", "dim b = 3, s = 5, v = 7\ninput targets: i32[b]\ninput tokens: i32[b, s]\ny = neg(tokens)\noutput y\n");
        var s = Stats.Compute(g);
        Assert.Equal(15, s.TokensPerStep);
        Assert.Equal(15.0 / 15, s.ForwardFlopsPerToken);
    }

    [Fact]
    public void Palm_flops_per_token_is_6N_plus_12LHQT()
    {
        var text = """
            dim heads = 2, head_dim = 4, seq = 8, layers = 3, d = 5
            input tokens: i32[seq]
            param e: f32[seq, d] = normal(1)
            x = gather(e, tokens, along=seq)
            repeat layers {
              param w: f32[d] = ones
              x = x * w
            }
            output x
            """;
        var s = Stats.Compute(Frontend.CompileText("f.palm", text));
        Assert.Equal(8 * 5 + 3 * 5, s.Parameters);
        Assert.Equal(6 * (8 * 5 + 3 * 5) + 12 * 3 * 2 * 4 * 8, s.FlopsPerTokenPalm);
    }
}
