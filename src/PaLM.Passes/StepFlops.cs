using PaLM.IR;

namespace PaLM.Passes;

/// <summary>
/// FLOPs of one compiled training step, from the op table's exact per-op counts (<see cref="OpDef.Flops"/>) over the
/// global training graph, loops counted once per trip.
/// <para>
/// What the counts include: every op the step executes, split into the forward pass, the backward pass (the ops that
/// compute gradients), the forward ops the backward pass recomputes under the remat policy, and the optimizer (norm,
/// clipping, Adafactor update). A multiply-add is 2 FLOPs; einsum counts 2·(product of all its dims); elementwise ops
/// count their formula per element (e.g. silu 4, layer norm 7); transcendental functions count 1.
/// What they leave out: data movement (reshape, concat, slicing, collectives), the causal mask's skipped half (the
/// attention einsums are counted dense, as PaLM counts them: this runs on the global graph, before the per-device
/// CausalBlocks pass makes four of them skip the blocks above the diagonal; a causal_einsum's own count, which the
/// profile reports, is the work it does), and integer work (gathers, scatter of token ids).
/// </para>
/// <para>
/// Model FLOPs follow PaLM appendix B instead: 6N + 12·L·H·Q·T per token (N parameters; L layers, H heads, Q head
/// dim, T sequence), the work of forward and backward without rematerialization, independent of how the compiler
/// implements the step. MFU divides it by time and peak; HFU adds what the remat policy recomputes (the exact count of
/// the recomputed ops), as the paper's 57.8% HFU does for 540B.
/// </para>
/// </summary>
public sealed record StepFlops(
    long Forward,
    long Backward,
    long Recomputed,
    long Optimizer,
    long Matmul,
    long TokensPerStep,
    long Parameters,
    long Layers,
    long? ModelFlopsPerToken,
    IReadOnlyDictionary<string, long> ByOp,
    IReadOnlyDictionary<string, long> PerLayer)
{
    /// <summary>Everything the step executes.</summary>
    public long Executed => Forward + Backward + Recomputed + Optimizer;

    /// <summary>PaLM's model FLOPs of one step (null when the graph is not PaLM-shaped: no heads/head_dim/seq dims).</summary>
    public long? ModelFlopsPerStep => ModelFlopsPerToken * TokensPerStep;

    /// <summary>Model FLOPs plus recomputation: the numerator of HFU.</summary>
    public long? HardwareFlopsPerStep => ModelFlopsPerStep + Recomputed;

    private enum Phase { Forward, Backward, Recomputed, Optimizer }

    public static StepFlops Of(CompiledTraining compiled)
    {
        var training = compiled.Training;
        var g = training.Graph;
        var info = training.Gradients;
        var recomputed = info.Recomputed.Select(r => r.Node).ToHashSet(ReferenceEqualityComparer.Instance);

        // Backward = the top-level nodes after the forward ones that the gradients depend on; the rest is the optimizer.
        var producers = new Dictionary<Value, Node>(ReferenceEqualityComparer.Instance);
        foreach (var n in g.Body.Nodes) foreach (var o in n.Outputs) producers[o] = n;
        var backward = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var work = new Stack<Value>(info.Grads.Values);
        var forwardNodes = g.Body.Nodes.Take(info.ForwardNodes).ToHashSet(ReferenceEqualityComparer.Instance);
        while (work.Count > 0)
        {
            if (!producers.TryGetValue(work.Pop(), out var n) || forwardNodes.Contains(n) || !backward.Add(n)) continue;
            foreach (var i in n.Inputs) work.Push(i);
        }

        var totals = new long[4];
        long matmul = 0;
        var byOp = new SortedDictionary<string, long>(StringComparer.Ordinal);
        var perLayer = new SortedDictionary<string, long>(StringComparer.Ordinal);
        void Count(IEnumerable<Node> nodes, long trips, Phase phase, bool inLoop)
        {
            foreach (var n in nodes)
            {
                var p = recomputed.Contains(n) ? Phase.Recomputed : phase;
                var f = checked(n.Op.Flops(n) * trips);
                totals[(int)p] = checked(totals[(int)p] + f);
                if (n.Op.IsMatmul) matmul = checked(matmul + f);
                if (f > 0) byOp[n.Op.Name] = byOp.GetValueOrDefault(n.Op.Name) + f;
                if (inLoop && f > 0)
                {
                    var key = p.ToString().ToLowerInvariant();
                    perLayer[key] = perLayer.GetValueOrDefault(key) + f;
                }
                foreach (var r in n.Regions)
                    Count(r.Nodes, checked(trips * ControlOps.Count(n, g.DimsByName)), p, inLoop: true);
            }
        }
        for (int i = 0; i < g.Body.Nodes.Length; i++)
        {
            var n = g.Body.Nodes[i];
            var phase = i < info.ForwardNodes ? Phase.Forward : backward.Contains(n) ? Phase.Backward : Phase.Optimizer;
            Count([n], 1, phase, inLoop: false);
        }
        // Per layer: everything the layer loops run, over the layers (remat auto splits the layers over two loops, which
        // together run every layer once).
        var (parameters, layers, perToken, tokens) = Model(training);
        foreach (var k in perLayer.Keys.ToList()) perLayer[k] = layers == 0 ? 0 : perLayer[k] / layers;

        return new StepFlops(totals[0], totals[1], totals[2], totals[3], matmul, tokens, parameters, layers,
            perToken, byOp, perLayer);
    }

    /// <summary>
    /// N, L, PaLM's model FLOPs per token and the tokens of a training step, without counting its ops (a count over the
    /// global graph of a large model at a large batch can exceed 64 bits; the per-token figure does not).
    /// </summary>
    public static (long Parameters, long Layers, long? ModelFlopsPerToken, long TokensPerStep) Model(TrainingGraph training)
    {
        var g = training.Graph;
        long layers = g.Body.Nodes.Take(training.Gradients.ForwardNodes).Where(n => n.Op.HasRegion).Sum(n => ControlOps.Count(n, g.DimsByName));
        var parameters = g.Parameters.Sum(p => p.Value.Type.ElementCount);
        var tokens = g.Inputs.FirstOrDefault(a => a.Value.Name == "tokens")?.Value.Type.ElementCount ?? 1;
        return (parameters, layers, Stats.PalmFlopsPerToken(g, parameters, layers), tokens);
    }
}
