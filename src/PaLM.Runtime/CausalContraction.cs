using System.Runtime.InteropServices;
using System.Numerics;
using PaLM.Runtime.Native;
using TorchSharp;
using static TorchSharp.torch;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

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
    /// causal_softmax of <see cref="Run"/>'s product over its key (the IR's <c>causal_einsum_softmax</c>): with the direct
    /// plan, each block of queries is normalized right after its product, while it is in cache, so the scores are never
    /// written out and read back. Elsewhere the product, then <see cref="RowKernels.CausalSoftmax"/>; the same bits
    /// either way (the same products, the same row arithmetic).
    /// </summary>
    public static Tensor RunSoftmax(string spec, char q, char k, long blocks, long queryAxis, long keyAxis, Tensor[] operands)
    {
        if (operands.Length == 2 && !General && Contraction.TryParse(spec, out var plan)
            && plan.RunCausal(operands[0], operands[1], q, k, blocks, new SoftmaxEpilogue()) is { } direct)
            return direct;
        using var scores = Run(spec, q, k, blocks, operands);
        return RowKernels.CausalSoftmax(scores, queryAxis, keyAxis);
    }

    /// <summary>
    /// softmax_grad(product, y) over the key (the IR's <c>causal_einsum_softmax_grad</c>): <paramref name="spec"/> lists a
    /// third operand, y, with the output's subscripts. With the direct plan each block's rows become y · (dy − Σ dy·y)
    /// while in cache, the columns past the block (where the product is zero) −(Σ dy·y)·y, as softmax_grad of the
    /// product would give for any y. Elsewhere the product, then <see cref="RowKernels.SoftmaxGrad"/>.
    /// </summary>
    public static Tensor RunSoftmaxGrad(string spec, char q, char k, long blocks, long keyAxis, Tensor[] operands)
    {
        var product = s_productOfGrad.GetOrAdd(spec, static spec =>
        {
            var arrow = spec.Split("->");
            var ins = arrow[0].Split(',');
            return arrow.Length == 2 && ins.Length == 3 && ins[2] == arrow[1] ? $"{ins[0]},{ins[1]}->{arrow[1]}" : null;
        });
        if (operands.Length != 3 || product is null)
            throw new ArgumentException($"causal_einsum_softmax_grad: expected two factors and y with the output's subscripts, got '{spec}'");
        if (!General && Contraction.TryParse(product, out var plan)
            && plan.RunCausal(operands[0], operands[1], q, k, blocks, new SoftmaxGradEpilogue(operands[2])) is { } direct)
            return direct;
        using var dy = Run(product, q, k, blocks, [operands[0], operands[1]]);
        return RowKernels.SoftmaxGrad(dy, operands[2], keyAxis);
    }

    /// <summary>The two factors' product spec of each softmax-gradient spec seen (parsed once, not per call).</summary>
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, string?> s_productOfGrad = new(StringComparer.Ordinal);

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

/// <summary>
/// A row operation fused into the blocks of a causal product (<see cref="Contraction.RunCausal"/>): it runs over a
/// block's rows right after the block's product is written, on the thread that wrote it, and owns each row whole:
/// the block's columns hold the products, the rest of the row (past the block's last key) is its to write.
/// </summary>
internal abstract unsafe class CausalEpilogue
{
    /// <summary>Lays out what the epilogue reads besides the product as the product is laid out ([B, M, N], through
    /// <paramref name="asProduct"/>); false when a row of it is not contiguous (the plan then declines).</summary>
    public virtual bool Bind(Func<Tensor, Tensor> asProduct) => true;

    /// <summary>Runs over rows [<paramref name="first"/>, <paramref name="last"/>) of product <paramref name="batch"/>
    /// (row-major, <paramref name="length"/> per row, <paramref name="batchStride"/> after product 0 at
    /// <paramref name="c"/>), whose columns [0, <paramref name="computed"/>) the block has written; row r's query is
    /// r / <paramref name="rowInner"/>. Rows are independent: blocks may run on several threads at once.</summary>
    public void Rows(float* c, long batch, long batchStride, long first, long last, long rowInner, long computed, long length)
    {
        for (long r = first; r < last; r++)
            Row(batch, r, r / rowInner, new Span<float>(c + batch * batchStride + r * length, checked((int)length)), (int)computed);
    }

    /// <summary>Row <paramref name="row"/> of product <paramref name="batch"/>, for query <paramref name="query"/>.</summary>
    protected abstract void Row(long batch, long row, long query, Span<float> values, int computed);
}

/// <summary>causal_softmax over each row: keys up to the row's query, through the same row function as RowKernels'
/// causal softmax, zeros after.</summary>
internal sealed class SoftmaxEpilogue : CausalEpilogue
{
    protected override void Row(long batch, long row, long query, Span<float> values, int computed)
    {
        // The block's last query is below its last key, so every valid key lies inside the computed columns.
        var live = values[..(int)Math.Min(query + 1, computed)];
        RowKernels.SoftmaxRow(live, live);
        values[live.Length..].Clear();
    }
}

/// <summary>softmax_grad(dy, y) over each row, dy being the product: zero past the computed columns.</summary>
internal sealed unsafe class SoftmaxGradEpilogue(Tensor y) : CausalEpilogue
{
    private Tensor? _rows;
    private float* _y;
    private long _batchStride, _rowStride;

    public override bool Bind(Func<Tensor, Tensor> asProduct)
    {
        var m = asProduct(y);
        if (m.dtype != ScalarType.Float32 || m.shape[2] > 1 && m.stride(2) != 1) return false;
        _y = (float*)TensorMemory.FirstElement(m);
        (_rows, _batchStride, _rowStride) = (m, m.stride(0), m.stride(1));
        return true;
    }

    /// <remarks>Vector loops, not a <c>TensorPrimitives</c> call per step: at attention's row lengths (64–512) the calls'
    /// own cost was about a third of the epilogue (one layer of palm-cpu's rows on one thread: 3.4–3.7 ms against
    /// 5.0–5.2).</remarks>
    protected override void Row(long batch, long row, long query, Span<float> values, int computed)
    {
        var ys = new ReadOnlySpan<float>(_y + batch * _batchStride + row * _rowStride, values.Length);
        int W = Vector<float>.Count;
        int n = values.Length, last = computed - computed % W;
        ref float v = ref MemoryMarshal.GetReference(values);
        ref float y = ref MemoryMarshal.GetReference(ys);
        var acc = Vector<float>.Zero;
        for (int i = 0; i < last; i += W)
            acc = Vector.FusedMultiplyAdd(Vector.LoadUnsafe(ref v, (nuint)i), Vector.LoadUnsafe(ref y, (nuint)i), acc);
        float dot = Vector.Sum(acc);
        for (int i = last; i < computed; i++) dot = MathF.FusedMultiplyAdd(values[i], ys[i], dot);
        var vd = new Vector<float>(dot);
        for (int i = 0; i < last; i += W)
            ((Vector.LoadUnsafe(ref v, (nuint)i) - vd) * Vector.LoadUnsafe(ref y, (nuint)i)).StoreUnsafe(ref v, (nuint)i);
        for (int i = last; i < computed; i++) values[i] = (values[i] - dot) * ys[i];
        // Past the computed columns the product is zero: −(Σ dy·y)·y.
        var vn = new Vector<float>(-dot);
        int j = computed;
        for (; j + W <= n; j += W) (Vector.LoadUnsafe(ref y, (nuint)j) * vn).StoreUnsafe(ref v, (nuint)j);
        for (; j < n; j++) values[j] = ys[j] * -dot;
        GC.KeepAlive(_rows);
    }
}
