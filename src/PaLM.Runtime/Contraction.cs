using System.Collections.Concurrent;
using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>
/// A two-operand einsum as one batched matmul whose dim order follows the operands' memory layout.
/// <para>
/// Why: torch.einsum orders the contracted and free dims as the spec lists them, so an operand that is a permuted view
/// (as the attention scores are: computed as <c>[b, s, h, t]</c>, read as <c>[b, h, s, t]</c>) is copied into that
/// order first. Measured on palm-cpu's attention gradient <c>bhst,bshd->btd</c> with such a view: 47 ms through
/// torch.einsum, 12 ms as <c>[b, t, s·h] @ [b, s·h, d]</c>, which reads both operands where they lie.
/// </para>
/// <para>
/// How: labels in both operands and the output are batch dims, in both but not the output are contracted, in one
/// operand and the output are that side's free dims. Each group is ordered by the memory order (strides) of the
/// operand it best fits, so merging it into one matrix dim is a view; matmul then reads [B, M, K] and [B, K, N] with
/// whatever strides they have (a transposed layout included) without copying (on BLAS; the oneDNN kernel copies a
/// strided operand first, which <see cref="Gemm"/>'s tuning measures with it).
/// The result is the matmul's [B, M, N] seen through a view and a permutation in the spec's output order. Specs this
/// does not cover (a label summed out of one operand only, repeated labels, ellipses) go to torch.einsum.
/// </para>
/// </summary>
internal sealed class Contraction
{
    private static readonly ConcurrentDictionary<string, Contraction?> s_cache = new(StringComparer.Ordinal);

    private readonly string _x, _y, _out;
    private readonly char[] _batch, _contracted, _left, _right;

    /// <summary>The same product with the operands' roles swapped, when the output lists the second operand's free dims
    /// first: the matmul then writes the result in the output's own order instead of as a transposed view (a weight
    /// gradient laid out as the weight is, so whatever copies it copies contiguous memory).</summary>
    private readonly Contraction? _swapped;

    private Contraction(string x, string y, string output, bool mayswap = true)
    {
        (_x, _y, _out) = (x, y, output);
        _batch = [.. output.Where(c => x.Contains(c) && y.Contains(c))];
        _contracted = [.. x.Where(c => y.Contains(c) && !output.Contains(c))];
        _left = [.. output.Where(c => x.Contains(c) && !y.Contains(c))];
        _right = [.. output.Where(c => y.Contains(c) && !x.Contains(c))];
        if (mayswap && output.FirstOrDefault(c => !_batch.Contains(c)) is var first && _right.Contains(first))
            _swapped = new Contraction(y, x, output, mayswap: false);
    }

    /// <summary>The contraction of <paramref name="spec"/>, or false when it is not a plain two-operand product.</summary>
    public static bool TryParse(string spec, out Contraction c)
    {
        c = s_cache.GetOrAdd(spec, Parse)!;
        return c is not null;
    }

    private static Contraction? Parse(string spec)
    {
        var arrow = spec.Split("->");
        if (arrow.Length != 2) return null;
        var ins = arrow[0].Split(',');
        if (ins.Length != 2) return null;
        string x = ins[0], y = ins[1], o = arrow[1];
        bool Plain(string s) => s.All(char.IsAsciiLetter) && s.Distinct().Count() == s.Length;
        if (!Plain(x) || !Plain(y) || !Plain(o)) return null;
        // Every label of an operand is in the other operand or the output; every output label is in an operand.
        if (x.Any(ch => !y.Contains(ch) && !o.Contains(ch)) || y.Any(ch => !x.Contains(ch) && !o.Contains(ch))) return null;
        if (o.Any(ch => !x.Contains(ch) && !y.Contains(ch))) return null;
        return new Contraction(x, y, o);
    }

    public Tensor Run(Tensor x, Tensor y)
    {
        if (_swapped is not null) return _swapped.Run(y, x);
        if (x.dim() != _x.Length || y.dim() != _y.Length) return torch.einsum($"{_x},{_y}->{_out}", x, y);
        long Size(char c) => _x.IndexOf(c) is var i and >= 0 ? x.shape[i] : y.shape[_y.IndexOf(c)];
        var (batch, contracted, left, right) = Order(x, y);
        long B = batch.Aggregate(1L, (n, c) => n * Size(c)), M = left.Aggregate(1L, (n, c) => n * Size(c));
        long N = right.Aggregate(1L, (n, c) => n * Size(c)), K = contracted.Aggregate(1L, (n, c) => n * Size(c));

        using var scope = NewDisposeScope();
        var xm = AsMatrix(x, _x, batch, left, contracted, B, M, K);                 // [B, M, K]
        var ym = AsMatrix(y, _y, batch, right, contracted, B, N, K).transpose(1, 2);   // [B, K, N]
        var product = Gemm.Matmul(xm, ym);                                          // [B, M, N], on the tuned kernel
        return InOutputOrder(product, Size, batch, left, right).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The product with operand <paramref name="joined"/> given as <paramref name="pieces"/> joined along its dim
    /// <paramref name="axis"/>, whose label the output keeps: each piece's product goes into its slice of the result,
    /// written there by BLAS directly (<see cref="TryRunInto"/>) or copied in. Null when the output drops the label
    /// (a contracted join: the caller concatenates).
    /// <para>
    /// Why: parallel-layer fusion joins the saved SwiGLU and attention outputs (and the output projections' weights)
    /// for one product in the backward pass; making that join copied 31 MB a layer (11–21 ms a step) where the
    /// products can read each piece where it lies.
    /// </para>
    /// </summary>
    internal Tensor? RunOverPieces(int joined, long axis, Tensor other, Tensor[] pieces)
    {
        var spec = joined == 0 ? _x : _y;
        char label = spec[(int)axis];
        int outAxis = _out.IndexOf(label);
        var otherSpec = joined == 0 ? _y : _x;
        // A label the other operand has too (a batch label) would pair each piece with all of it: not a join of products.
        if (outAxis < 0 || otherSpec.Contains(label) || pieces.Length == 0 || pieces.Any(p => p.dim() != spec.Length) || other.dim() != otherSpec.Length) return null;
        long Size(char c) => c == label ? pieces.Sum(p => p.shape[axis])
            : otherSpec.IndexOf(c) is var i and >= 0 ? other.shape[i] : pieces[0].shape[spec.IndexOf(c)];
        var result = torch.empty([.. _out.Select(Size)], other.dtype, other.device);
        long offset = 0;
        foreach (var piece in pieces)
        {
            long length = piece.shape[axis];
            using var slice = result.narrow(outAxis, offset, length);
            var (x, y) = joined == 0 ? (piece, other) : (other, piece);
            if (!TryRunInto(x, y, slice))
            {
                using var part = Run(x, y);
                slice.copy_(part);
            }
            offset += length;
        }
        return result;
    }

    /// <summary>
    /// The product written into <paramref name="destination"/> (of the output's shape) by direct BLAS calls, one per
    /// batch; false, writing nothing, where that does not fit: not fp32 on the CPU, no BLAS, or a destination whose
    /// dims do not merge into [B, M, N] rows of unit stride (then the caller copies a product in).
    /// </summary>
    internal unsafe bool TryRunInto(Tensor x, Tensor y, Tensor destination)
    {
        if (_swapped is not null) return _swapped.TryRunInto(y, x, destination);
        if (!Native.Blas.Available || x.dim() != _x.Length || y.dim() != _y.Length || destination.dim() != _out.Length) return false;
        if (new[] { x, y, destination }.Any(t => t.dtype != ScalarType.Float32 || t.device_type != DeviceType.CPU)) return false;
        long Size(char c) => _x.IndexOf(c) is var i and >= 0 ? x.shape[i] : y.shape[_y.IndexOf(c)];
        // BLAS writes the whole product: the destination must be exactly its shape, and every pointer within reach.
        if (Enumerable.Range(0, _out.Length).Any(i => destination.shape[i] != Size(_out[i]))) return false;
        if (new[] { x, y, destination }.Any(t => Native.TensorMemory.Extent(t) * sizeof(float) > int.MaxValue)) return false;
        var (batch, contracted, left, right) = Order(x, y);
        long B = batch.Aggregate(1L, (n, c) => n * Size(c)), M = left.Aggregate(1L, (n, c) => n * Size(c));
        long N = right.Aggregate(1L, (n, c) => n * Size(c)), K = contracted.Aggregate(1L, (n, c) => n * Size(c));
        if (B == 0 || M == 0 || N == 0 || K == 0) return false;
        using var arranged = Arrange(destination, _out, batch, left, right);
        if (MergedStride(arranged, 0, batch.Length) is not { } db || MergedStride(arranged, batch.Length, left.Length) is not { } dm
            || MergedStride(arranged, batch.Length + left.Length, right.Length) is not { } dn || dn != 1 && N > 1 || dm < N && M > 1) return false;
        using var scope = NewDisposeScope();
        var xm = Readable(AsMatrix(x, _x, batch, left, contracted, B, M, K));   // [B, M, K]
        var ym = Readable(AsMatrix(y, _y, batch, right, contracted, B, N, K));  // [B, N, K]
        float* xp = (float*)Native.TensorMemory.FirstElement(xm), yp = (float*)Native.TensorMemory.FirstElement(ym);
        float* dp = (float*)Native.TensorMemory.FirstElement(destination);
        for (long b = 0; b < B; b++)
            Native.Blas.Sgemm(M, N, K, xp + b * xm.stride(0), xm.stride(1), xm.stride(2), yp + b * ym.stride(0), ym.stride(1), ym.stride(2),
                dp + b * db, Math.Max(dm, N));
        GC.KeepAlive(xm);
        GC.KeepAlive(ym);
        GC.KeepAlive(destination);
        return true;
    }

    /// <summary>The stride of dims [from, from + count) of <paramref name="t"/> merged into one (size-1 dims ignored; 1
    /// for none), or null when they do not merge: each must step over exactly the next one's extent.</summary>
    private static long? MergedStride(Tensor t, int from, int count)
    {
        var dims = Enumerable.Range(from, count).Where(d => t.shape[d] != 1).ToArray();
        if (dims.Length == 0) return 1;
        for (int i = 0; i + 1 < dims.Length; i++)
            if (t.stride(dims[i]) != t.stride(dims[i + 1]) * t.shape[dims[i + 1]]) return null;
        return t.stride(dims[^1]);
    }

    /// <summary>
    /// The product over causal attention's triangle (the IR's <c>causal_einsum</c>) as blocks of direct BLAS calls
    /// (<see cref="Native.Blas"/>), or null where this plan does not apply (the caller's general path runs it).
    /// <para>
    /// The same [B, M, K] · [B, N, K] plan as <see cref="Run"/>. The label split into <paramref name="blocks"/> blocks
    /// (the query when the output keeps it, else the key) must lead its free group, and the label its blocks meet (the
    /// key, or the query) must lead its own group, free or contracted: then a block of the split label is a contiguous
    /// range of rows (or columns) of the matrix product, the keys up to the block's last query (or the queries from its
    /// first key) are a contiguous range of the other group, and each block is one BLAS call per batch that reads both
    /// operands where they lie and writes its rows of the result in place. Where the output keeps both labels, the
    /// rest of each block's rows is written as zeros. In attention's layouts ([b, s, h, ·] activations, [b, t, d] keys
    /// and values) all six products qualify: heads ride along inside the query's group, so the heads-and-queries
    /// contraction of the keys' and values' gradients is one product per block instead of one per head. The calls are
    /// dealt whole to the op's threads, one thread each (<see cref="CausalBlockProducts"/>).
    /// </para>
    /// </summary>
    /// <param name="x">The spec's first operand.</param>
    /// <param name="y">Its second operand.</param>
    /// <param name="q">The query's label.</param>
    /// <param name="k">The key's label.</param>
    /// <param name="blocks">How many blocks the split label is cut into.</param>
    /// <param name="epilogue">A row operation applied to each block's rows right after its products, while they are still
    /// in cache (attention's softmax, or its gradient): it then owns each row whole, the zeros past the block included.
    /// It needs the query split along the rows and the key alone along the columns; elsewhere the plan declines.</param>
    internal unsafe Tensor? RunCausal(Tensor x, Tensor y, char q, char k, long blocks, CausalEpilogue? epilogue = null)
    {
        if (_swapped is not null) return _swapped.RunCausal(y, x, q, k, blocks, epilogue);
        if (x.dim() != _x.Length || y.dim() != _y.Length || !Native.Blas.Available) return null;
        if (x.dtype != ScalarType.Float32 || y.dtype != ScalarType.Float32 || x.device_type != DeviceType.CPU || y.device_type != DeviceType.CPU) return null;
        long Size(char c) => _x.IndexOf(c) is var i and >= 0 ? x.shape[i] : y.shape[_y.IndexOf(c)];
        var (batch, contracted, left, right) = Order(x, y);
        bool splitQuery = _out.Contains(q);
        char split = splitQuery ? q : k, other = splitQuery ? k : q;
        // Where each label sits: 0 rows (left), 1 columns (right), 2 contracted. Each must lead its group, but for labels
        // of size 1 before it (they add nothing to an index; ties in the memory order can put them first).
        bool Leads(char[] g, char c) => Array.IndexOf(g, c) is var i and >= 0 && g.Take(i).All(l => Size(l) == 1);
        int Group(char c) => Leads(left, c) ? 0 : Leads(right, c) ? 1 : Leads(contracted, c) ? 2 : -1;
        int sg = Group(split), og = Group(other);
        if (sg is not (0 or 1) || og < 0 || og == sg) return null;

        long Prod(char[] g) => g.Aggregate(1L, (n, c) => n * Size(c));
        long B = Prod(batch), M = Prod(left), N = Prod(right), K = Prod(contracted);
        long Q = Size(q), Kk = Size(k), S = Size(split);
        if (B == 0 || M == 0 || N == 0 || K == 0) return null;     // nothing to multiply: the general path's zeros
        long[] extent = [M, N, K];
        long sInner = extent[sg] / S, oInner = extent[og] / Size(other);
        blocks = Math.Clamp(blocks, 1, S);
        if (epilogue is not null && !(splitQuery && sg == 0 && og == 1 && oInner == 1)) return null;

        using var scope = NewDisposeScope();
        var xm = Readable(AsMatrix(x, _x, batch, left, contracted, B, M, K));   // [B, M, K]
        var ym = Readable(AsMatrix(y, _y, batch, right, contracted, B, N, K));  // [B, N, K]
        var product = torch.empty([B, M, N], ScalarType.Float32);
        float* xp = (float*)Native.TensorMemory.FirstElement(xm), yp = (float*)Native.TensorMemory.FirstElement(ym);
        float* cp = (float*)Native.TensorMemory.Address(product);
        long xb = xm.stride(0), xr = xm.stride(1), xc = xm.stride(2), yb = ym.stride(0), yr = ym.stride(1), yc = ym.stride(2);
        // The epilogue's other operands, laid out as the product is ([B, M, N] in the same label order).
        if (epilogue is not null && !epilogue.Bind(t => Arrange(t, _out, batch, left, right).reshape(B, M, N))) return null;
        var items = new List<CausalBlockProducts.Item>();
        for (long bi = 0; bi < blocks; bi++)
        {
            long lo = S * bi / blocks, hi = S * (bi + 1) / blocks;
            // The block's range of the other label: keys up to its last query, or queries from its first key.
            var (oLo, oHi) = splitQuery ? (0L, Math.Min(Kk, hi)) : (Math.Min(lo, Q), Q);
            long[] from = [0, 0, 0], to = [M, N, K];
            (from[sg], to[sg]) = (lo * sInner, hi * sInner);
            (from[og], to[og]) = (oLo * oInner, oHi * oInner);
            for (long b = 0; b < B; b++) items.Add(new(b, from[0], to[0], from[1], to[1], from[2], to[2]));
        }
        // Where the output keeps both labels, the rest of each block's rows (or columns) holds the products it skipped:
        // zeros, unless the epilogue writes them.
        var zeros = epilogue is not null || og == 2 ? CausalBlockProducts.ZeroFill.None : sg == 0 ? CausalBlockProducts.ZeroFill.Columns : CausalBlockProducts.ZeroFill.Rows;
        CausalBlockProducts.Run(items, xp, xb, xr, xc, yp, yb, yr, yc, cp, M, N, zeros, epilogue, sInner, torch.get_num_threads());
        GC.KeepAlive(xm);
        GC.KeepAlive(ym);
        GC.KeepAlive(epilogue);
        return InOutputOrder(product, Size, batch, left, right).MoveToOuterDisposeScope();
    }

    /// <summary>The matrix product [B, M, N] seen as [batch..., left..., right...], then permuted to the output's order
    /// (views only).</summary>
    private Tensor InOutputOrder(Tensor product, Func<char, long> size, char[] batch, char[] left, char[] right)
    {
        char[] order = [.. batch, .. left, .. right];
        var result = product.view([.. order.Select(size)]);
        var perm = _out.Select(c => (long)Array.IndexOf(order, c)).ToArray();
        return perm.Select((p, i) => p == i).All(b => b) ? result : result.permute(perm);
    }

    /// <summary><paramref name="m"/> ([B, R, C]) as it is when BLAS can read each matrix in place, else a contiguous copy.</summary>
    private static Tensor Readable(Tensor m) =>
        Native.Blas.Readable(m.shape[1], m.shape[2], m.stride(1), m.stride(2)) ? m : m.contiguous();

    /// <summary>
    /// <paramref name="t"/> as [B, F, K] (rows: its free dims, columns: the contracted ones): a view when each group's
    /// dims, in the order chosen, merge into one (matmul takes any strides of the last two dims), else a copy. The copy
    /// keeps t's innermost dim innermost: where that dim is free, it is made as [B, K, F] and read transposed, so a
    /// strided slice is copied row by row instead of transposed element by element. (The values' gradient reads a
    /// slice of the output projections' input gradient, [b, s, h, d] at row stride 3840, as [b, d, s·h]: transposing
    /// it took 7.8 ms a layer on palm-cpu, against 4.9 for the whole product from a dense copy.)
    /// </summary>
    private static Tensor AsMatrix(Tensor t, string spec, char[] batch, char[] free, char[] contracted, long B, long F, long K)
    {
        var arranged = Arrange(t, spec, batch, free, contracted);
        int nb = batch.Length, nf = free.Length, rank = (int)arranged.dim();
        if (Mergeable(arranged, [nb, nf, contracted.Length])) return arranged.reshape(B, F, K);
        var dims = Enumerable.Range(0, rank).Where(d => arranged.shape[d] != 1).ToArray();
        if (dims.Length == 0) return arranged.reshape(B, F, K);
        var inner = dims.MinBy(d => arranged.stride(d));
        if (inner < nb || inner >= nb + nf) return arranged.reshape(B, F, K);
        long[] freeLast = [.. Enumerable.Range(0, nb), .. Enumerable.Range(nb + nf, rank - nb - nf), .. Enumerable.Range(nb, nf)];
        return arranged.permute(freeLast).contiguous().reshape(B, K, F).transpose(1, 2);
    }

    private static Tensor Arrange(Tensor t, string spec, char[] batch, char[] free, char[] contracted)
    {
        long[] Dims(IEnumerable<char> labels) => [.. labels.Select(c => (long)spec.IndexOf(c))];
        return t.permute([.. Dims(batch), .. Dims(free), .. Dims(contracted)]);
    }

    /// <summary>
    /// Each group in memory order: batch and contracted dims as the larger operand lays them out (its copy would cost
    /// more), free dims as their own operand does.
    /// </summary>
    private (char[] Batch, char[] Contracted, char[] Left, char[] Right) Order(Tensor x, Tensor y)
    {
        var (big, bigSpec) = x.numel() >= y.numel() ? (x, _x) : (y, _y);
        return (ByMemory(_batch, big, bigSpec), ByMemory(_contracted, big, bigSpec), ByMemory(_left, x, _x), ByMemory(_right, y, _y));
    }

    /// <summary>Whether <see cref="Run"/> reads both operands in place (no copy to rearrange either): for tests.</summary>
    internal bool ReadsInPlace(Tensor x, Tensor y)
    {
        if (_swapped is not null) return _swapped.ReadsInPlace(y, x);
        var (batch, contracted, left, right) = Order(x, y);
        int[] Runs(char[] free) => [batch.Length, free.Length, contracted.Length];
        return Mergeable(Arrange(x, _x, batch, left, contracted), Runs(left))
            && Mergeable(Arrange(y, _y, batch, right, contracted), Runs(right));
    }

    /// <summary>Whether each consecutive run of dims (of the given lengths) can merge into one dim as a view.</summary>
    private static bool Mergeable(Tensor t, int[] runs)
    {
        var shape = t.shape;
        var strides = t.stride();
        int d = 0;
        foreach (var run in runs)
        {
            for (int i = d; i < d + run - 1; i++)
                if (shape[i] != 1 && shape[i + 1] != 1 && strides[i] != strides[i + 1] * shape[i + 1]) return false;
            d += run;
        }
        return true;
    }

    /// <summary><paramref name="labels"/> sorted by decreasing stride in <paramref name="t"/> (its memory order).</summary>
    private static char[] ByMemory(char[] labels, Tensor t, string spec)
    {
        var strides = t.stride();
        return [.. labels.OrderByDescending(c => spec.IndexOf(c) is var i and >= 0 ? strides[i] : 0).ThenBy(c => Array.IndexOf(labels, c))];
    }
}
