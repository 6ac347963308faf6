using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>
/// Block skipping for causal attention's einsums: the runtime of the IR's <c>causal_einsum</c>, whose pass
/// (PaLM.Passes.CausalBlocks) decides where the skipped blocks can only hold zeros, or zeros nobody reads. The split
/// here must match the IR's FLOP count of it (ContractionOps.CausalWork).
/// </summary>
internal static class CausalContraction
{
    /// <summary><c>PALMC_CAUSAL=general</c> runs every causal einsum on the general path below (to compare; read on each
    /// call, a few dozen a step, so a test can pin the path for the programs it compares bit for bit).</summary>
    private static bool General => Environment.GetEnvironmentVariable("PALMC_CAUSAL") == "general";

    /// <summary>
    /// A two-operand einsum over causal attention's triangle (the IR's <c>causal_einsum</c>), in
    /// <paramref name="blocks"/> blocks of the query label <paramref name="q"/> (when the output keeps it) or else of the
    /// key label <paramref name="k"/>: each block multiplies the operands narrowed to keys up to the block's last query,
    /// or to queries from the block's first key, and its result is copied into its slice of the output. Where the
    /// output keeps both labels, keys past a block's last query are written as zeros.
    /// </summary>
    public static Tensor Run(string spec, char q, char k, long blocks, Tensor[] operands)
    {
        // Direct BLAS calls on the blocks where the operands' layouts allow (attention's do); this general path otherwise.
        if (operands.Length == 2 && !General && Contraction.TryParse(spec, out var plan) && plan.RunCausal(operands[0], operands[1], q, k, blocks) is { } direct)
            return direct;
        var arrow = spec.Split("->");
        var ins = arrow[0].Split(',');
        string output = arrow[1];
        var xs = (Tensor[])operands.Clone();
        long Size(char c) => ins[0].IndexOf(c) is var i and >= 0 ? xs[0].shape[i] : xs[1].shape[ins[1].IndexOf(c)];
        long Q = Size(q), K = Size(k);
        // Blocks of a contracted label would each be a partial sum; the IR never asks for that (causal_einsum's rule
        // wants the query or the key in the output), and an empty split has nothing to skip.
        if (!output.Contains(q) && !output.Contains(k) || Q == 0 || K == 0) return Rt.Einsum(spec, xs);
        bool splitQuery = output.Contains(q);
        long split = splitQuery ? Q : K;
        blocks = Math.Clamp(blocks, 1, split);
        Tensor Narrow(Tensor t, string labels, char c, long start, long length) =>
            labels.IndexOf(c) is var d and >= 0 && (start != 0 || length != t.shape[d]) ? t.narrow(d, start, length) : t;

        var result = torch.empty([.. output.Select(Size)], xs[0].dtype);
        using var scope = NewDisposeScope();
        // When the query is contracted with other labels (the heads, in the values' and keys' gradients), narrowing it
        // would split the contracted group, which then no longer merges into one matrix dim as a view. So those other
        // labels become batch labels of each block's product and are summed out after it, and each operand is laid
        // out with its batch labels first, once, so that the narrowed blocks stay views.
        string blockSpec = spec, blockOut = output;
        var extra = splitQuery ? "" : new string([.. ins[0].Where(c => c != q && ins[1].Contains(c) && !output.Contains(c))]);
        if (extra.Length > 0)
        {
            blockOut = extra + output;
            var batch = blockOut.Where(c => ins[0].Contains(c) && ins[1].Contains(c)).ToArray();
            for (int i = 0; i < 2; i++)
            {
                var order = batch.Concat(ins[i].Where(c => !batch.Contains(c))).ToArray();
                xs[i] = xs[i].permute([.. order.Select(c => (long)ins[i].IndexOf(c))]).contiguous();
                ins[i] = new string(order);
            }
            blockSpec = $"{ins[0]},{ins[1]}->{blockOut}";
        }
        var summed = Enumerable.Range(0, extra.Length).Select(i => (long)i).ToArray();
        for (long b = 0; b < blocks; b++)
        {
            long lo = split * b / blocks, hi = split * (b + 1) / blocks;
            // This block of the split label, and the range of the other label it can meet.
            var (sc, sStart, sLen) = splitQuery ? (q, lo, hi - lo) : (k, lo, hi - lo);
            var (oc, oStart, oLen) = splitQuery ? (k, 0L, Math.Min(K, hi)) : (q, lo, Math.Max(0, Q - lo));
            if (oLen == 0)
            {
                Narrow(result, output, sc, sStart, sLen).zero_();
                continue;
            }
            var a = Narrow(Narrow(xs[0], ins[0], sc, sStart, sLen), ins[0], oc, oStart, oLen);
            var c = Narrow(Narrow(xs[1], ins[1], sc, sStart, sLen), ins[1], oc, oStart, oLen);
            var part = Rt.Einsum(blockSpec, a, c);
            if (summed.Length > 0) part = part.sum(summed);
            var slice = Narrow(result, output, sc, sStart, sLen);
            Narrow(slice, output, oc, oStart, oLen).copy_(part);
            if (output.Contains(oc) && oStart + oLen < Size(oc)) Narrow(slice, output, oc, oStart + oLen, Size(oc) - oStart - oLen).zero_();
        }
        return result;
    }
}
