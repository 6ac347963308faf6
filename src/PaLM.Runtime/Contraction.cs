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
        var size = Sizes(x, y);
        var (batch, contracted, left, right) = Order(size);
        long B = size.Product(batch), M = size.Product(left), N = size.Product(right), K = size.Product(contracted);

        using var scope = NewDisposeScope();
        var xm = AsMatrix(x, size.X, _x, batch, left, contracted, B, M, K);                 // [B, M, K]
        var ym = AsMatrix(y, size.Y, _y, batch, right, contracted, B, N, K).transpose(1, 2);   // [B, K, N]
        var product = Gemm.Matmul(xm, ym);                                          // [B, M, N], on the tuned kernel
        return InOutputOrder(product, size, batch, left, right).MoveToOuterDisposeScope();
    }

    // Shapes and strides are fetched once per call into plain arrays, and the plan's steps are loops: at palm-tiny's
    // sizes an einsum's managed garbage (7.8 KB a call through Tensor.shape and LINQ) cost more than its product.

    /// <summary>Both operands' shapes and strides, with their subscripts: what a plan reads of its operands.</summary>
    private readonly record struct Operand(string Spec, long[] Shape, long[] Strides)
    {
        public Operand(string spec, Tensor t) : this(spec, Native.TensorMemory.Shape(t), Native.TensorMemory.Strides(t)) { }

        public long Numel
        {
            get
            {
                long n = 1;
                foreach (var d in Shape) n *= d;
                return n;
            }
        }
    }

    /// <summary>Label sizes of one call, read from its operands.</summary>
    private readonly record struct LabelSizes(Operand X, Operand Y)
    {
        public long Of(char c) => X.Spec.IndexOf(c) is var i and >= 0 ? X.Shape[i] : Y.Shape[Y.Spec.IndexOf(c)];

        public long Product(char[] labels)
        {
            long n = 1;
            foreach (var c in labels) n *= Of(c);
            return n;
        }
    }

    private LabelSizes Sizes(Tensor x, Tensor y) => new(new Operand(_x, x), new Operand(_y, y));

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
        long Size(char c) => c == label ? pieces.Sum(p => p.size((int)axis))
            : otherSpec.IndexOf(c) is var i and >= 0 ? other.size(i) : pieces[0].size(spec.IndexOf(c));
        var result = torch.empty([.. _out.Select(Size)], other.dtype, other.device);
        long offset = 0;
        foreach (var piece in pieces)
        {
            long length = piece.size((int)axis);
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
    /// batch, each on the kernel tuned for its shape (<see cref="Gemm.Into"/>: MKL's threads, or a piece per thread);
    /// false, writing nothing, where that does not fit: not fp32 on the CPU, no BLAS, or a destination whose dims do not
    /// merge into [B, M, N] rows of unit stride (then the caller copies a product in).
    /// </summary>
    internal unsafe bool TryRunInto(Tensor x, Tensor y, Tensor destination)
    {
        if (_swapped is not null) return _swapped.TryRunInto(y, x, destination);
        if (!Native.Blas.Available || x.dim() != _x.Length || y.dim() != _y.Length || destination.dim() != _out.Length) return false;
        if (!Fp32OnCpu(x) || !Fp32OnCpu(y) || !Fp32OnCpu(destination)) return false;
        var size = Sizes(x, y);
        // BLAS writes the whole product: the destination must be exactly its shape, and every pointer within reach.
        for (int i = 0; i < _out.Length; i++) if (destination.size(i) != size.Of(_out[i])) return false;
        if (Native.TensorMemory.Extent(x) * sizeof(float) > int.MaxValue || Native.TensorMemory.Extent(y) * sizeof(float) > int.MaxValue
            || Native.TensorMemory.Extent(destination) * sizeof(float) > int.MaxValue) return false;
        var (batch, contracted, left, right) = Order(size);
        long B = size.Product(batch), M = size.Product(left), N = size.Product(right), K = size.Product(contracted);
        if (B == 0 || M == 0 || N == 0 || K == 0) return false;
        var dest = new Operand(_out, destination);
        var dims = Dims(_out, batch, left, right);
        if (MergedStride(dest, dims, 0, batch.Length) is not { } db || MergedStride(dest, dims, batch.Length, left.Length) is not { } dm
            || MergedStride(dest, dims, batch.Length + left.Length, right.Length) is not { } dn || dn != 1 && N > 1 || dm < N && M > 1) return false;
        using var scope = NewDisposeScope();
        var xm = Native.Blas.InPlaceOrCopy(AsMatrix(x, size.X, _x, batch, left, contracted, B, M, K));   // [B, M, K]
        var ym = Native.Blas.InPlaceOrCopy(AsMatrix(y, size.Y, _y, batch, right, contracted, B, N, K));  // [B, N, K]
        float* xp = (float*)Native.TensorMemory.FirstElement(xm), yp = (float*)Native.TensorMemory.FirstElement(ym);
        float* dp = (float*)Native.TensorMemory.FirstElement(destination);
        for (long b = 0; b < B; b++)
            Gemm.Into(M, N, K, xp + b * xm.stride(0), xm.stride(1), xm.stride(2), yp + b * ym.stride(0), ym.stride(1), ym.stride(2),
                dp + b * db, Math.Max(dm, N));
        GC.KeepAlive(xm);
        GC.KeepAlive(ym);
        GC.KeepAlive(destination);
        return true;
    }

    private static bool Fp32OnCpu(Tensor t) => t.dtype == ScalarType.Float32 && t.device_type == DeviceType.CPU;

    /// <summary>The stride of dims <c>dims[from..from + count]</c> of <paramref name="t"/> merged into one (size-1 dims
    /// ignored; 1 for none), or null when they do not merge: each must step over exactly the next one's extent.</summary>
    private static long? MergedStride(Operand t, long[] dims, int from, int count)
    {
        long? merged = null;
        long inner = 0;
        for (int i = from + count - 1; i >= from; i--)
        {
            long d = dims[i];
            if (t.Shape[d] == 1) continue;
            if (merged is null) merged = t.Strides[d];
            else if (t.Strides[d] != inner) return null;
            inner = t.Strides[d] * t.Shape[d];
        }
        return merged ?? 1;
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
        if (!Fp32OnCpu(x) || !Fp32OnCpu(y)) return null;
        var size = Sizes(x, y);
        var (batch, contracted, left, right) = Order(size);
        bool splitQuery = _out.Contains(q);
        char split = splitQuery ? q : k, other = splitQuery ? k : q;
        // Where each label sits: 0 rows (left), 1 columns (right), 2 contracted.
        int sg = Group(size, split, left, right, contracted), og = Group(size, other, left, right, contracted);
        if (sg is not (0 or 1) || og < 0 || og == sg) return null;

        long B = size.Product(batch), M = size.Product(left), N = size.Product(right), K = size.Product(contracted);
        long Q = size.Of(q), Kk = size.Of(k), S = size.Of(split);
        if (B == 0 || M == 0 || N == 0 || K == 0) return null;     // nothing to multiply: the general path's zeros
        long[] extent = [M, N, K];
        long sInner = extent[sg] / S, oInner = extent[og] / size.Of(other);
        blocks = Math.Clamp(blocks, 1, S);
        if (epilogue is not null && !(splitQuery && sg == 0 && og == 1 && oInner == 1)) return null;

        using var scope = NewDisposeScope();
        var xm = Native.Blas.InPlaceOrCopy(AsMatrix(x, size.X, _x, batch, left, contracted, B, M, K));   // [B, M, K]
        var ym = Native.Blas.InPlaceOrCopy(AsMatrix(y, size.Y, _y, batch, right, contracted, B, N, K));  // [B, N, K]
        var product = torch.empty([B, M, N], ScalarType.Float32);
        float* xp = (float*)Native.TensorMemory.FirstElement(xm), yp = (float*)Native.TensorMemory.FirstElement(ym);
        float* cp = (float*)Native.TensorMemory.Address(product);
        long xb = xm.stride(0), xr = xm.stride(1), xc = xm.stride(2), yb = ym.stride(0), yr = ym.stride(1), yc = ym.stride(2);
        // The epilogue's other operands, laid out as the product is ([B, M, N] in the same label order).
        if (epilogue is not null && !epilogue.Bind(t => t.permute(Dims(_out, batch, left, right)).reshape(B, M, N))) return null;
        var items = new List<CausalBlockProducts.Item>((int)Math.Min(blocks * B, 1 << 16));
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
        return InOutputOrder(product, size, batch, left, right).MoveToOuterDisposeScope();
    }

    /// <summary>Where <paramref name="c"/> leads a group of the matrix product: 0 rows (left), 1 columns (right), 2
    /// contracted, -1 none. Labels of size 1 may come before it (they add nothing to an index; ties in the memory order
    /// can put them first).</summary>
    private static int Group(LabelSizes size, char c, char[] left, char[] right, char[] contracted)
    {
        static bool Leads(LabelSizes size, char[] g, char c)
        {
            foreach (var l in g)
            {
                if (l == c) return true;
                if (size.Of(l) != 1) return false;
            }
            return false;
        }
        return Leads(size, left, c) ? 0 : Leads(size, right, c) ? 1 : Leads(size, contracted, c) ? 2 : -1;
    }

    /// <summary>The matrix product [B, M, N] seen as [batch..., left..., right...], then permuted to the output's order
    /// (views only).</summary>
    private Tensor InOutputOrder(Tensor product, LabelSizes size, char[] batch, char[] left, char[] right)
    {
        var shape = new long[_out.Length];
        var perm = new long[_out.Length];
        int at = 0;
        foreach (var g in (ReadOnlySpan<char[]>)[batch, left, right])
            foreach (var c in g) shape[at++] = size.Of(c);
        bool identity = true;
        for (int i = 0; i < _out.Length; i++)
        {
            char c = _out[i];
            int j = Array.IndexOf(batch, c);
            if (j < 0 && (j = Array.IndexOf(left, c)) >= 0) j += batch.Length;
            else if (j < 0) j = batch.Length + left.Length + Array.IndexOf(right, c);
            perm[i] = j;
            identity &= j == i;
        }
        var result = product.view(shape);
        return identity ? result : result.permute(perm);
    }

    /// <summary>
    /// <paramref name="t"/> as [B, F, K] (rows: its free dims, columns: the contracted ones): a view when each group's
    /// dims, in the order chosen, merge into one (matmul takes any strides of the last two dims), else a copy. The copy
    /// keeps t's innermost dim innermost: where that dim is free, it is made as [B, K, F] and read transposed, so a
    /// strided slice is copied row by row instead of transposed element by element. (The values' gradient reads a
    /// slice of the output projections' input gradient, [b, s, h, d] at row stride 3840, as [b, d, s·h]: transposing
    /// it took 7.8 ms a layer on palm-cpu, against 4.9 for the whole product from a dense copy.)
    /// </summary>
    private static Tensor AsMatrix(Tensor t, Operand o, string spec, char[] batch, char[] free, char[] contracted, long B, long F, long K)
    {
        var dims = Dims(spec, batch, free, contracted);
        int nb = batch.Length, nf = free.Length, rank = dims.Length;
        bool identity = true;
        for (int i = 0; i < rank; i++) identity &= dims[i] == i;
        var arranged = identity ? t : t.permute(dims);
        if (Mergeable(o, dims, [nb, nf, contracted.Length])) return arranged.reshape(B, F, K);
        // The innermost dim (smallest stride, of size > 1) decides how a copy is laid out.
        int inner = -1;
        for (int i = 0; i < rank; i++)
            if (o.Shape[dims[i]] != 1 && (inner < 0 || o.Strides[dims[i]] < o.Strides[dims[inner]])) inner = i;
        if (inner < nb || inner >= nb + nf) return arranged.reshape(B, F, K);
        var freeLast = new long[rank];
        int at = 0;
        for (int i = 0; i < nb; i++) freeLast[at++] = i;
        for (int i = nb + nf; i < rank; i++) freeLast[at++] = i;
        for (int i = nb; i < nb + nf; i++) freeLast[at++] = i;
        return arranged.permute(freeLast).contiguous().reshape(B, K, F).transpose(1, 2);
    }

    /// <summary>The dims of an operand with subscripts <paramref name="spec"/> in the order of the groups given.</summary>
    private static long[] Dims(string spec, char[] first, char[] second, char[] third)
    {
        var dims = new long[first.Length + second.Length + third.Length];
        int at = 0;
        foreach (var c in first) dims[at++] = spec.IndexOf(c);
        foreach (var c in second) dims[at++] = spec.IndexOf(c);
        foreach (var c in third) dims[at++] = spec.IndexOf(c);
        return dims;
    }

    /// <summary>
    /// Each group in memory order: batch and contracted dims as the larger operand lays them out (its copy would cost
    /// more), free dims as their own operand does.
    /// </summary>
    private (char[] Batch, char[] Contracted, char[] Left, char[] Right) Order(LabelSizes size)
    {
        var big = size.X.Numel >= size.Y.Numel ? size.X : size.Y;
        return (ByMemory(_batch, big), ByMemory(_contracted, big), ByMemory(_left, size.X), ByMemory(_right, size.Y));
    }

    /// <summary>Whether <see cref="Run"/> reads both operands in place (no copy to rearrange either): for tests.</summary>
    internal bool ReadsInPlace(Tensor x, Tensor y)
    {
        if (_swapped is not null) return _swapped.ReadsInPlace(y, x);
        var size = Sizes(x, y);
        var (batch, contracted, left, right) = Order(size);
        return Mergeable(size.X, Dims(_x, batch, left, contracted), [batch.Length, left.Length, contracted.Length])
            && Mergeable(size.Y, Dims(_y, batch, right, contracted), [batch.Length, right.Length, contracted.Length]);
    }

    /// <summary>Whether each consecutive run of <paramref name="dims"/> (of the given lengths) can merge into one dim as
    /// a view of <paramref name="t"/>.</summary>
    private static bool Mergeable(Operand t, long[] dims, ReadOnlySpan<int> runs)
    {
        int d = 0;
        foreach (var run in runs)
        {
            if (MergedStride(t, dims, d, run) is null) return false;
            d += run;
        }
        return true;
    }

    /// <summary><paramref name="labels"/> sorted by decreasing stride in <paramref name="t"/> (its memory order; labels it
    /// lacks count as stride 0; ties keep the labels' order).</summary>
    private static char[] ByMemory(char[] labels, Operand t)
    {
        if (labels.Length == 0) return labels;
        var strides = new long[labels.Length];
        for (int i = 0; i < labels.Length; i++) strides[i] = t.Spec.IndexOf(labels[i]) is var d and >= 0 ? t.Strides[d] : 0;
        var order = StableOrder.Descending(strides);
        var sorted = new char[labels.Length];
        for (int i = 0; i < sorted.Length; i++) sorted[i] = labels[order[i]];
        return sorted;
    }
}
