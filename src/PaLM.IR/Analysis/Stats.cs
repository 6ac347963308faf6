namespace PaLM.IR;

/// <summary>Size and cost figures of a graph, as <c>palmc stats</c> reports them.</summary>
public sealed record GraphStats(
    long Parameters,
    long Layers,
    long TokensPerStep,
    long ForwardFlops,
    long ForwardMatmulFlops,
    long? FlopsPerTokenPalm)
{
    public double ForwardFlopsPerToken => (double)ForwardFlops / TokensPerStep;

    public double MatmulFraction => ForwardFlops == 0 ? 0 : (double)ForwardMatmulFlops / ForwardFlops;
}

/// <summary>Counts parameters and FLOPs over the IR, with repeat bodies counted once per trip.</summary>
public static class Stats
{
    public static GraphStats Compute(Graph g)
    {
        long parameters = g.Parameters.Sum(p => p.Value.Type.ElementCount);
        long layers = 0;
        var (flops, matmul) = Count(g, g.Body, 1, top: true, ref layers);
        var tokensArg = g.Inputs.FirstOrDefault(a => a.Value.Name == "tokens") ?? g.Inputs.FirstOrDefault();
        long tokens = tokensArg?.Value.Type.ElementCount ?? 1;
        return new GraphStats(parameters, layers, tokens, flops, matmul, PalmFlopsPerToken(g, parameters, layers));
    }

    /// <summary>
    /// PaLM appendix B: 6N + 12·L·H·Q·T model FLOPs per token (forward and backward; 6N for the dense matmuls,
    /// 12·L·H·Q·T for attention; rematerialization not counted). H, Q and T are the dims named heads, head_dim and seq;
    /// null when the graph has no such dims (the formula is PaLM's, not general).
    /// </summary>
    public static long? PalmFlopsPerToken(Graph g, long parameters, long layers)
    {
        if (!g.DimsByName.TryGetValue("heads", out var h) || !g.DimsByName.TryGetValue("head_dim", out var q) ||
            !g.DimsByName.TryGetValue("seq", out var t))
            return null;
        return checked(6 * parameters + 12 * layers * h.Size * q.Size * t.Size);
    }

    private static (long Flops, long Matmul) Count(Graph g, Block b, long trips, bool top, ref long layers)
    {
        long flops = 0, matmul = 0;
        foreach (var n in b.Nodes)
        {
            var f = checked(n.Op.Flops(n) * trips);
            flops = checked(flops + f);
            if (n.Op.IsMatmul) matmul = checked(matmul + f);
            foreach (var r in n.Regions)
            {
                var count = ControlOps.Count(n, g.DimsByName);
                if (top) layers += count;
                var (rf, rm) = Count(g, r, checked(trips * count), top: false, ref layers);
                flops = checked(flops + rf);
                matmul = checked(matmul + rm);
            }
        }
        return (flops, matmul);
    }
}
