using System.Runtime.InteropServices;
using System.Numerics;
using PaLM.Runtime.Native;
using TorchSharp;
using static TorchSharp.torch;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

namespace PaLM.Runtime;

/// <summary>
/// Row-wise kernels for the attention softmax and its gradient, and layer norm's input gradient: each row along the
/// reduced dim is read and written once, where the composite TorchSharp forms take a pass over the whole tensor per op
/// (mask, softmax; multiply, sum, subtract, multiply; about ten for layer norm's). They run on fp32 CPU tensors whose
/// row dim is contiguous (stride 1) in every operand, whatever the other dims' layouts (the scores einsum returns a
/// permuted view), on libtorch's OpenMP team; anything else takes the composite form, which computes the same values.
/// </summary>
public static unsafe class RowKernels
{
    /// <summary>
    /// softmax(causal_mask(x)) along <paramref name="keyAxis"/>: row q keeps keys 0..q (key ≤ query, as
    /// <see cref="Rt.CausalMask"/>), so the masked exponentials are neither computed nor summed, and their
    /// probabilities are exactly 0. The result is laid out like x.
    /// </summary>
    public static Tensor CausalSoftmax(Tensor x, long queryAxis, long keyAxis)
    {
        if (ResultLike(x, keyAxis, x) is not { } y)
        {
            using var masked = Rt.CausalMask(x, queryAxis, keyAxis);
            return masked.softmax(keyAxis);
        }
        Run(new CausalSoftmaxRows(Rows.Of(x, keyAxis, queryAxis), Rows.Of(y, keyAxis, queryAxis)), x, x);
        return y;
    }

    /// <summary>The softmax's VJP along <paramref name="axis"/>: y · (dy − Σ dy·y), y the softmax's result.</summary>
    public static Tensor SoftmaxGrad(Tensor dy, Tensor y, long axis)
    {
        if (!TensorMemory.SameShape(dy, y) || ResultLike(y, axis, dy, y) is not { } dx)
        {
            using var scope = NewDisposeScope();
            return (y * (dy - (dy * y).sum(axis, keepdim: true))).MoveToOuterDisposeScope();
        }
        Run(new SoftmaxGradRows(Rows.Of(dy, axis), Rows.Of(y, axis), Rows.Of(dx, axis)), y, dy, y);
        return dx;
    }

    /// <summary>
    /// Layer norm's scale cotangent over the last axis (see <see cref="Rt.LayerNormDScale"/>): Σ over rows of dy · x̂, x̂
    /// recomputed per row in cache, in one read of x and dy. Null where it does not apply (fp32 CPU operands of one shape
    /// whose last dim is contiguous); the caller takes the composite form (layer_norm, multiply, sum: four passes).
    /// <para>
    /// Rows are taken in blocks of <see cref="ScaleBlockRows"/>, each summed in fp32 into a partial of its own; the
    /// partials are added in fp64 in block order, so the result does not depend on the thread count.
    /// </para>
    /// </summary>
    public static Tensor? LayerNormDScale(Tensor dy, Tensor x, double eps)
    {
        var axis = x.dim() - 1;
        if (axis < 0 || !TensorMemory.SameShape(dy, x) || !Applies(axis, dy, x)) return null;
        return ScaleSums(dy, x, eps, dx: null, scale: null);
    }

    /// <summary>
    /// Both of layer norm's cotangents in one read of x and dy (see <see cref="Rt.LayerNormGrads"/>): each row's x̂,
    /// made once in cache, gives its row of dx (<see cref="LayerNormDx"/>'s arithmetic) and its term of dscale
    /// (<see cref="LayerNormDScale"/>'s blocks and order), so both come out bit for bit as the two kernels give them.
    /// Null where either kernel does not apply.
    /// </summary>
    public static (Tensor Dx, Tensor DScale)? LayerNormGrads(Tensor dy, Tensor x, Tensor scale, double eps)
    {
        var axis = x.dim() - 1;
        if (axis < 0 || !TensorMemory.SameShape(dy, x) || scale.dim() != 1 || scale.size(0) != x.size((int)axis)
            || !Applies(0, scale) || ResultLike(x, axis, dy, x) is not { } dx) return null;
        return (dx, ScaleSums(dy, x, eps, dx, scale));
    }

    /// <summary>Σ over rows of dy · x̂, and with <paramref name="dx"/> given each row's input cotangent into it too.</summary>
    private static Tensor ScaleSums(Tensor dy, Tensor x, double eps, Tensor? dx, Tensor? scale)
    {
        var axis = x.dim() - 1;
        long length = x.size((int)axis), rows = x.numel() / length;
        // The partials and sums come from the shared pools: at palm-cpu's size (32 blocks of 768) a new array each call
        // would be a large-object allocation, on fresh pages every time.
        long blocks = (rows + ScaleBlockRows - 1) / ScaleBlockRows;
        var partial = System.Buffers.ArrayPool<float>.Shared.Rent(checked((int)(blocks * length)));
        var sums = System.Buffers.ArrayPool<double>.Shared.Rent((int)length);
        try
        {
            Array.Clear(partial, 0, (int)(blocks * length));
            Array.Clear(sums, 0, (int)length);
            var work = new LayerNormDScaleBlocks(Rows.Of(dy, axis), Rows.Of(x, axis), rows, blocks, partial, (float)eps,
                dx is null ? null : Rows.Of(dx, axis), scale is null ? null : Rows.Of(scale, 0));
            OpenMpTeam.Run(work, Math.Min(OpenMpTeam.ThreadsFor(x.numel(), torch.get_num_threads()), (int)Math.Min(blocks, 256)));
            GC.KeepAlive(dy);
            GC.KeepAlive(x);
            GC.KeepAlive(dx);
            GC.KeepAlive(scale);
            for (long b = 0; b < blocks; b++)
                for (int j = 0; j < length; j++) sums[j] += partial[b * length + j];
            // Each fp64 sum rounded once to fp32, as a float64 tensor's conversion would.
            var result = torch.empty(length, ScalarType.Float32);
            var into = (float*)TensorMemory.Address(result);
            for (int j = 0; j < length; j++) into[j] = (float)sums[j];
            return result;
        }
        finally
        {
            System.Buffers.ArrayPool<float>.Shared.Return(partial);
            System.Buffers.ArrayPool<double>.Shared.Return(sums);
        }
    }

    /// <summary>Rows per fp32 partial of <see cref="LayerNormDScale"/>.</summary>
    public const int ScaleBlockRows = 64;

    private sealed unsafe class LayerNormDScaleBlocks(Rows dy, Rows x, long rows, long blocks, float[] partial, float eps, Rows? dx, Rows? scale) : TeamWork
    {
        [ThreadStatic] private static float[]? t_xhat;
        [ThreadStatic] private static long[]? t_index;

        protected override void Run(int worker, int workers)
        {
            int length = x.Length;
            if (t_xhat is null || t_xhat.Length < length) t_xhat = new float[length];
            if (t_index is null || t_index.Length != x.Shape.Length) t_index = new long[x.Shape.Length];
            var xhat = t_xhat.AsSpan(0, length);
            var index = t_index;
            long first = blocks * worker / workers, last = blocks * (worker + 1) / workers;
            for (long b = first; b < last; b++)
            {
                var acc = partial.AsSpan((int)(b * length), length);
                for (long r = b * ScaleBlockRows; r < Math.Min(rows, (b + 1) * ScaleBlockRows); r++)
                {
                    RowWork.Unravel(r, x.Shape, x.Axis, index);
                    var xs = new ReadOnlySpan<float>(RowWork.AtIndex(x, index), length);
                    var dys = new ReadOnlySpan<float>(RowWork.AtIndex(dy, index), length);
                    if (dx is { } d && scale is { } s)
                        BackwardRow(xs, dys, new ReadOnlySpan<float>(s.Base, length), xhat, new Span<float>(RowWork.AtIndex(d, index), length), acc, eps);
                    else
                        BackwardRow(xs, dys, default, xhat, default, acc, eps);
                }
            }
        }
    }

    /// <summary>
    /// Σ x² over each of <paramref name="rows"/> rows of <paramref name="columns"/> contiguous elements of
    /// <paramref name="x"/> (an fp32 CPU tensor whose reduced dims are its innermost, dense or rows of contiguous
    /// elements at one stride that tile each reduced row: a parameter group's member), in one read of x on the
    /// OpenMP team; null where that does not hold (the caller takes the chunked TorchSharp form).
    /// <para>
    /// Each row is cut into blocks of <see cref="SquaresBlock"/> elements, summed in fp32 by
    /// <see cref="TensorPrimitives.SumOfSquares"/> (16 lanes, so about 128 additions a lane), and the blocks' sums are
    /// added in fp64 in block order: the result does not depend on the thread count. Why not the TorchSharp form
    /// (square a chunk, sum it, add): it reads each element twice and runs about 4 GB/s below memory speed; the
    /// Adafactor update calls this on every weight's gradient, update and value.
    /// </para>
    /// </summary>
    public static double[]? SumSquaresRows(Tensor x, long rows, long columns)
    {
        if (x.dtype != ScalarType.Float32 || x.device_type != DeviceType.CPU || rows * columns != x.numel()
            || Native.TensorMemory.Extent(x) * sizeof(float) > int.MaxValue) return null;
        var sums = new double[rows];
        if (rows == 0 || columns == 0) return sums;
        // A contiguous x is one run per row; a strided one (a member of a parameter group: rows of its own elements
        // at the group's row stride) is read in place when its rows of contiguous elements tile each reduced row.
        long run = columns, stride = columns;
        if (!x.is_contiguous())
        {
            var shape = Native.TensorMemory.Shape(x);
            long[] order = [.. Enumerable.Range(0, shape.Length).Select(d => (long)d)];
            if (FusedLoop.RowLayout(shape, [Native.TensorMemory.Strides(x)], order) is not { } layout || columns % layout.Columns != 0) return null;
            (run, stride) = (layout.Columns, layout.Strides[0]);
        }
        var work = new SquaresWork(Native.TensorMemory.FirstElement(x), rows, columns, run, stride);
        OpenMpTeam.Run(work, Math.Min(OpenMpTeam.ThreadsFor(rows * columns, torch.get_num_threads()), (int)Math.Min(work.Blocks, 256)));
        GC.KeepAlive(x);
        for (long r = 0; r < rows; r++)
        {
            double s = 0;
            for (long b = r * work.PerRow; b < (r + 1) * work.PerRow; b++) s += work.Partial[b];
            sums[r] = s;
        }
        return sums;
    }

    /// <summary>Elements per fp32 partial sum of <see cref="SumSquaresRows"/>.</summary>
    public const int SquaresBlock = 2048;

    private sealed unsafe class SquaresWork(nint data, long rows, long columns, long run, long stride) : TeamWork
    {
        private readonly long _perRun = (run + SquaresBlock - 1) / SquaresBlock;
        public long PerRow { get; } = columns / run * ((run + SquaresBlock - 1) / SquaresBlock);
        public long Blocks => rows * PerRow;
        public double[] Partial { get; } = new double[rows * (columns / run * ((run + SquaresBlock - 1) / SquaresBlock))];

        protected override void Run(int worker, int workers)
        {
            long first = Blocks * worker / workers, last = Blocks * (worker + 1) / workers;
            for (long b = first; b < last; b++)
            {
                long row = b / PerRow, within = b % PerRow, r = row * (columns / run) + within / _perRun, column = within % _perRun * SquaresBlock;
                var span = new ReadOnlySpan<float>((float*)data + r * stride + column, (int)Math.Min(SquaresBlock, run - column));
                Partial[b] = TensorPrimitives.SumOfSquares(span);
            }
        }
    }

    /// <summary>
    /// Layer norm's input cotangent over the last axis (see <see cref="Rt.LayerNormDx"/>), one pass per row: the row's
    /// mean and variance, x̂ into per-thread scratch, g = dy · scale into the result, its two means, then the result in
    /// place. Null where the kernel does not apply (the caller takes the composite form): fp32 CPU operands of one
    /// shape whose last dim is contiguous, and a scale that is one contiguous row.
    /// </summary>
    public static Tensor? LayerNormDx(Tensor dy, Tensor x, Tensor scale, double eps)
    {
        var axis = x.dim() - 1;
        if (axis < 0 || !TensorMemory.SameShape(dy, x) || scale.dim() != 1 || scale.size(0) != x.size((int)axis)
            || !Applies(0, scale) || ResultLike(x, axis, dy, x) is not { } dx) return null;
        Run(new LayerNormDxRows(Rows.Of(dy, axis), Rows.Of(x, axis), Rows.Of(scale, 0), Rows.Of(dx, axis), (float)eps), x, dy, x, scale);
        return dx;
    }

    /// <summary>
    /// Rotary embedding over <paramref name="featureAxis"/> (see <see cref="Rt.Rope"/>), one pass per row of K features:
    /// out[j] = x[j]·cos − x[j+K/2]·sin and out[j+K/2] = x[j+K/2]·cos + x[j]·sin at the row's position along
    /// <paramref name="seqAxis"/> (sin negated for the inverse rotation). Null where it does not apply (fp32 CPU, the
    /// feature dim contiguous, K even); the caller takes the composite form, with the same tables.
    /// <para>
    /// Why: the composite form is a multiply and two strided multiply-adds over halves, three passes and a temporary;
    /// rope runs on every layer's queries, which are a strided slice of the fused projection's output.
    /// </para>
    /// </summary>
    public static Tensor? Rope(Tensor x, long seqAxis, long featureAxis, bool inverse)
    {
        long k = x.size((int)featureAxis);
        if (k % 2 != 0 || seqAxis == featureAxis || ResultLike(x, featureAxis, x) is not { } y) return null;
        var (cos, sin) = s_ropeRows.GetOrAdd((x.size((int)seqAxis), k), key => new Lazy<(float[], float[])>(() => RopeRowTables(key.S, key.K))).Value;
        Run(new RopeRows(Rows.Of(x, featureAxis), Rows.Of(y, featureAxis), (int)seqAxis, cos, sin, inverse), x, x);
        return y;
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(long S, long K), Lazy<(float[] Cos, float[] Sin)>> s_ropeRows = new();

    /// <summary>cos and sin of position·10000^(−2i/K) for i below K/2, [S, K/2] row-major: the angles and their
    /// functions in fp64, rounded once, as <see cref="Rt.Rope"/>'s tables are.</summary>
    private static (float[], float[]) RopeRowTables(long s, long k)
    {
        long half = k / 2;
        var (cos, sin) = (new float[s * half], new float[s * half]);
        for (long i = 0; i < half; i++)
        {
            double invFreq = Math.Exp(2 * i * (-Math.Log(10000.0) / k));
            for (long p = 0; p < s; p++)
            {
                double angle = p * invFreq;
                cos[p * half + i] = (float)Math.Cos(angle);
                sin[p * half + i] = (float)Math.Sin(angle);
            }
        }
        return (cos, sin);
    }

    /// <summary>
    /// Cross entropy with PaLM's z-loss over <paramref name="axis"/> (see <see cref="Rt.CrossEntropy"/>), one pass per row
    /// of logits: max, Σ exp(x − max), lse = max + log Σ, then lse − x[target] + z·lse² in fp64, rounded once. Null
    /// where it does not apply (fp32 CPU logits whose class dim is contiguous; int32/int64 targets of the other dims'
    /// shape); the caller takes the composite form. A target outside [0, classes) is an error, as gather's is.
    /// <para>
    /// Why: the composite is logsumexp, gather, subtract, square, multiply and add, each a libtorch call and most of
    /// them a pass; on palm-tiny the loss and its gradient took 0.33 ms of a 4.4 ms step in ops.
    /// </para>
    /// </summary>
    public static Tensor? CrossEntropy(Tensor logits, Tensor targets, long axis, double zLoss)
    {
        if (axis < 0) axis += logits.dim();
        if (!TargetsFit(logits, targets, axis) || !Applies(axis, logits)) return null;
        return RunCrossEntropy(logits, targets, axis, zLoss, torch.empty(TensorMemory.Shape(targets), ScalarType.Float32), dy: null);
    }

    /// <summary>
    /// <see cref="CrossEntropy"/>'s VJP (see <see cref="Rt.CrossEntropyGrad"/>): per row, dy · (softmax(x)·(1 + 2z·lse) −
    /// onehot(target)), from one read of the row. Null where <see cref="CrossEntropy"/> would be, or dy is not fp32 of the
    /// targets' shape.
    /// </summary>
    public static Tensor? CrossEntropyGrad(Tensor dy, Tensor logits, Tensor targets, long axis, double zLoss)
    {
        if (axis < 0) axis += logits.dim();
        if (!TargetsFit(logits, targets, axis) || !TensorMemory.SameShape(dy, targets) || dy.dtype != ScalarType.Float32
            || dy.device_type != DeviceType.CPU || ResultLike(logits, axis, logits) is not { } dx) return null;
        return RunCrossEntropy(logits, targets, axis, zLoss, dx, dy);
    }

    /// <summary>Cross entropy's rows into <paramref name="result"/>: the loss (dense, the targets' shape) when
    /// <paramref name="dy"/> is null, else the gradient (laid out like the logits). Targets and dy are read as dense
    /// copies in the rows' order; the result is disposed if a target is out of range.</summary>
    private static Tensor RunCrossEntropy(Tensor logits, Tensor targets, long axis, double zLoss, Tensor result, Tensor? dy)
    {
        using var ids = targets.to_type(ScalarType.Int64);
        using var dense = ids.contiguous();
        using var dys = dy?.contiguous();
        try
        {
            var work = dys is null
                ? new CrossEntropyRows(Rows.Of(logits, axis), (long*)TensorMemory.FirstElement(dense), (float*)TensorMemory.FirstElement(result), null, null, zLoss)
                : new CrossEntropyRows(Rows.Of(logits, axis), (long*)TensorMemory.FirstElement(dense), null, (float*)TensorMemory.FirstElement(dys), Rows.Of(result, axis), zLoss);
            Run(work, logits, logits, dense, result, dys ?? result);
        }
        catch
        {
            result.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>Whether <paramref name="targets"/> are integer class ids with <paramref name="logits"/>' shape less
    /// <paramref name="axis"/>, on the CPU.</summary>
    private static bool TargetsFit(Tensor logits, Tensor targets, long axis)
    {
        if (axis < 0 || axis >= logits.dim() || targets.dim() != logits.dim() - 1 || targets.device_type != DeviceType.CPU
            || targets.dtype is not (ScalarType.Int32 or ScalarType.Int64)) return false;
        for (int d = 0, t = 0; d < logits.dim(); d++)
            if (d != axis && logits.size(d) != targets.size(t++)) return false;
        return true;
    }

    /// <summary>
    /// A new tensor with <paramref name="like"/>'s shape and memory order (torch.empty_like keeps a dense permutation)
    /// when the kernels apply to <paramref name="operands"/> and the new tensor's row dim is contiguous too; else null,
    /// and the caller takes the composite form (a gappy <paramref name="like"/> gets a row-major copy, whose row dim
    /// need not be the innermost).
    /// </summary>
    private static Tensor? ResultLike(Tensor like, long axis, params Tensor[] operands)
    {
        if (!Applies(axis, operands)) return null;
        var result = torch.empty_like(like);
        if (result.stride((int)axis) == 1) return result;
        result.Dispose();
        return null;
    }

    private static bool Applies(long axis, params Tensor[] ts)
    {
        foreach (var t in ts)
            if (!(t.dtype == ScalarType.Float32 && t.device_type == DeviceType.CPU && t.dim() <= 8 && t.numel() > 0
                && t.stride((int)axis) == 1 && Rows.Extent(t) * 4 <= int.MaxValue)) return false;
        return true;
    }

    /// <summary>Runs <paramref name="work"/> over the rows of <paramref name="x"/>, keeping <paramref name="operands"/>
    /// alive until it is done: the kernels hold only raw pointers into them.</summary>
    private static void Run(RowWork work, Tensor x, params Tensor[] operands)
    {
        long rows = x.numel() / x.size(work.Axis);
        OpenMpTeam.Run(work, Math.Min(OpenMpTeam.ThreadsFor(x.numel(), torch.get_num_threads()), (int)Math.Clamp(rows / 64, 1, 256)));
        GC.KeepAlive(operands);
    }

    /// <summary>Where each row of a tensor starts: its address and strides, walked in logical row order.</summary>
    internal readonly unsafe struct Rows
    {
        public readonly float* Base;
        public readonly long[] Shape, Strides;
        public readonly int Axis, Query;

        private Rows(float* b, long[] shape, long[] strides, int axis, int query)
        {
            Base = b;
            (Shape, Strides, Axis, Query) = (shape, strides, axis, query);
        }

        public static Rows Of(Tensor t, long axis, long query = -1)
        {
            return new Rows((float*)TensorMemory.FirstElement(t), TensorMemory.Shape(t), TensorMemory.Strides(t), (int)axis, (int)query);
        }

        public int Length => (int)Shape[Axis];

        /// <summary>Elements from the tensor's first to its last, gaps included (a strided view spans more than its numel).</summary>
        public static long Extent(Tensor t) => Native.TensorMemory.Extent(t);
    }

    private abstract class RowWork(int axis, long[] shape) : TeamWork
    {
        public int Axis { get; } = axis;

        protected override unsafe void Run(int worker, int workers)
        {
            long rows = 1;
            foreach (var n in shape) rows *= n;
            rows /= shape[Axis];
            long first = rows * worker / workers, last = rows * (worker + 1) / workers;
            // An odometer over the dims other than the row dim, started at row `first`.
            var index = new long[shape.Length];
            Unravel(first, shape, Axis, index);
            for (long row = first; row < last; row++)
            {
                Row(index);
                for (int d = shape.Length - 1; d >= 0; d--)
                {
                    if (d == Axis) continue;
                    if (++index[d] < shape[d]) break;
                    index[d] = 0;
                }
            }
        }

        protected abstract void Row(long[] index);

        /// <summary>Row number <paramref name="row"/>'s index over the dims of <paramref name="shape"/> other than
        /// <paramref name="axis"/> (row-major), into <paramref name="index"/>.</summary>
        public static void Unravel(long row, long[] shape, int axis, long[] index)
        {
            for (int d = shape.Length - 1; d >= 0; d--)
            {
                if (d == axis) continue;
                index[d] = row % shape[d];
                row /= shape[d];
            }
        }

        protected static unsafe float* At(in Rows t, long[] index) => AtIndex(t, index);

        /// <summary>The address of the row of <paramref name="t"/> at <paramref name="index"/> (the row dim's entry
        /// ignored if 0).</summary>
        public static unsafe float* AtIndex(in Rows t, long[] index)
        {
            long offset = 0;
            for (int d = 0; d < index.Length; d++) offset += index[d] * t.Strides[d];
            return t.Base + offset;
        }
    }

    private sealed unsafe class CausalSoftmaxRows(Rows x, Rows y) : RowWork(x.Axis, x.Shape)
    {
        protected override void Row(long[] index)
        {
            int length = x.Length, valid = (int)Math.Min(index[x.Query] + 1, length);
            var xs = new ReadOnlySpan<float>(At(x, index), valid);
            var ys = new Span<float>(At(y, index), length);
            SoftmaxRow(xs, ys[..valid]);
            ys[valid..].Clear();
        }
    }

    /// <summary>
    /// softmax of one row's live entries, <paramref name="x"/> into <paramref name="y"/> (the same length; they may be
    /// the same memory): exp(x − max) / Σ. The causal softmax's row kernel and its epilogue inside the causal product
    /// (<see cref="SoftmaxEpilogue"/>) both call it, which is what makes them the same bits.
    /// </summary>
    internal static void SoftmaxRow(ReadOnlySpan<float> x, Span<float> y)
    {
        TensorPrimitives.Subtract(x, TensorPrimitives.Max(x), y);
        VectorExp.Exp(y, y);
        TensorPrimitives.Divide(y, TensorPrimitives.Sum(y), y);
    }

    /// <summary>
    /// One row of layer norm's backward, in four vector passes over the row (in L1): the mean; the centered sum of
    /// squares, so rstd = 1/√(var + eps); x̂ = (x − mean)·rstd into <paramref name="xhat"/>, with
    /// <paramref name="acc"/> given acc += x̂·dy (the scale cotangent's term) and with <paramref name="dxs"/> given
    /// g = dy·scale into it and the sums of g and g·x̂; then dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) in place. Both
    /// gradient kernels and their pair share it, so they agree bit for bit. Written as one loop per pass rather than a
    /// <c>TensorPrimitives</c> call per step: at 768 a row the eleven calls' own cost outweighed the arithmetic (one
    /// thread, a [2048, 768] tensor: 1.57–1.61 ms as calls, 1.04–1.07 as these loops). <c>Vector&lt;float&gt;</c>,
    /// accelerated on every x64 and ARM64 machine, read no slower than <c>Vector512</c> here.
    /// </summary>
    private static void BackwardRow(ReadOnlySpan<float> xs, ReadOnlySpan<float> dys, ReadOnlySpan<float> scales, Span<float> xhat,
        Span<float> dxs, Span<float> acc, float eps)
    {
        int W = Vector<float>.Count;
        int n = xs.Length, last = n - n % W;
        ref float x = ref MemoryMarshal.GetReference(xs), dy = ref MemoryMarshal.GetReference(dys), xh = ref MemoryMarshal.GetReference(xhat);
        var vs = Vector<float>.Zero;
        for (int i = 0; i < last; i += W) vs += Vector.LoadUnsafe(ref x, (nuint)i);
        float sum = Vector.Sum(vs);
        for (int i = last; i < n; i++) sum += xs[i];
        float mean = sum / n;
        var vm = new Vector<float>(mean);
        var vq = Vector<float>.Zero;
        for (int i = 0; i < last; i += W)
        {
            var c = Vector.LoadUnsafe(ref x, (nuint)i) - vm;
            vq = Vector.FusedMultiplyAdd(c, c, vq);
        }
        float squares = Vector.Sum(vq);
        for (int i = last; i < n; i++) squares += (xs[i] - mean) * (xs[i] - mean);
        float rstd = 1f / MathF.Sqrt(squares / n + eps);
        var vr = new Vector<float>(rstd);
        bool withDx = !dxs.IsEmpty, withAcc = !acc.IsEmpty;
        ref float g = ref MemoryMarshal.GetReference(dxs), sc = ref MemoryMarshal.GetReference(scales), a = ref MemoryMarshal.GetReference(acc);
        var vg = Vector<float>.Zero;
        var vgx = Vector<float>.Zero;
        for (int i = 0; i < last; i += W)
        {
            var h = (Vector.LoadUnsafe(ref x, (nuint)i) - vm) * vr;
            var d = Vector.LoadUnsafe(ref dy, (nuint)i);
            h.StoreUnsafe(ref xh, (nuint)i);
            if (withAcc) Vector.FusedMultiplyAdd(h, d, Vector.LoadUnsafe(ref a, (nuint)i)).StoreUnsafe(ref a, (nuint)i);
            if (withDx)
            {
                var gi = d * Vector.LoadUnsafe(ref sc, (nuint)i);
                gi.StoreUnsafe(ref g, (nuint)i);
                vg += gi;
                vgx = Vector.FusedMultiplyAdd(gi, h, vgx);
            }
        }
        float sumG = Vector.Sum(vg), sumGx = Vector.Sum(vgx);
        for (int i = last; i < n; i++)
        {
            float h = (xs[i] - mean) * rstd;
            xhat[i] = h;
            if (withAcc) acc[i] = MathF.FusedMultiplyAdd(h, dys[i], acc[i]);
            if (withDx)
            {
                float gi = dys[i] * scales[i];
                dxs[i] = gi;
                sumG += gi;
                sumGx = MathF.FusedMultiplyAdd(gi, h, sumGx);
            }
        }
        if (!withDx) return;
        float m1 = sumG / n, m2 = sumGx / n;
        var v1 = new Vector<float>(m1);
        var v2 = new Vector<float>(m2);
        for (int i = 0; i < last; i += W)
            ((Vector.LoadUnsafe(ref g, (nuint)i) - v1 - Vector.LoadUnsafe(ref xh, (nuint)i) * v2) * vr).StoreUnsafe(ref g, (nuint)i);
        for (int i = last; i < n; i++) dxs[i] = (dxs[i] - m1 - xhat[i] * m2) * rstd;
    }

    private sealed unsafe class RopeRows(Rows x, Rows y, int seqAxis, float[] cos, float[] sin, bool inverse) : RowWork(x.Axis, x.Shape)
    {
        protected override void Row(long[] index)
        {
            int half = x.Length / 2;
            var table = (int)index[seqAxis] * half;
            var c = cos.AsSpan(table, half);
            var sn = sin.AsSpan(table, half);
            float* xp = At(x, index), yp = At(y, index);
            var lo = new ReadOnlySpan<float>(xp, half);
            var hi = new ReadOnlySpan<float>(xp + half, half);
            var outLo = new Span<float>(yp, half);
            var outHi = new Span<float>(yp + half, half);
            // Forward: lo·cos − hi·sin, hi·cos + lo·sin; the inverse swaps the signs of the sines.
            int i = 0, w = System.Numerics.Vector<float>.Count;
            for (; i <= half - w; i += w)
            {
                var (vc, vs) = (new System.Numerics.Vector<float>(c[i..]), new System.Numerics.Vector<float>(sn[i..]));
                var (vl, vh) = (new System.Numerics.Vector<float>(lo[i..]), new System.Numerics.Vector<float>(hi[i..]));
                (inverse ? vl * vc + vh * vs : vl * vc - vh * vs).CopyTo(outLo[i..]);
                (inverse ? vh * vc - vl * vs : vh * vc + vl * vs).CopyTo(outHi[i..]);
            }
            for (; i < half; i++)
            {
                outLo[i] = inverse ? lo[i] * c[i] + hi[i] * sn[i] : lo[i] * c[i] - hi[i] * sn[i];
                outHi[i] = inverse ? hi[i] * c[i] - lo[i] * sn[i] : hi[i] * c[i] + lo[i] * sn[i];
            }
        }
    }

    private sealed unsafe class LayerNormDxRows(Rows dy, Rows x, Rows scale, Rows dx, float eps) : RowWork(x.Axis, x.Shape)
    {
        [ThreadStatic] private static float[]? t_xhat;

        protected override void Row(long[] index)
        {
            int length = x.Length;
            var xs = new ReadOnlySpan<float>(At(x, index), length);
            var dys = new ReadOnlySpan<float>(At(dy, index), length);
            var scales = new ReadOnlySpan<float>(scale.Base, length);
            var dxs = new Span<float>(At(dx, index), length);
            if (t_xhat is null || t_xhat.Length < length) t_xhat = new float[length];
            var xhat = t_xhat.AsSpan(0, length);
            BackwardRow(xs, dys, scales, xhat, dxs, default, eps);
        }
    }

    /// <summary>Cross entropy's rows: the loss per row into <c>loss</c>, or with <c>dy</c> given its gradient into
    /// <c>dx</c>. Targets, loss and dy are dense in the rows' order (row-major over the dims other than the class dim).</summary>
    private sealed unsafe class CrossEntropyRows : RowWork
    {
        private readonly Rows _x;
        private readonly Rows? _dx;
        private readonly long* _targets;
        private readonly float* _loss, _dy;
        private readonly double _z;
        private readonly long[] _rowStrides;
        [ThreadStatic] private static float[]? t_exp;

        public CrossEntropyRows(Rows x, long* targets, float* loss, float* dy, Rows? dx, double zLoss) : base(x.Axis, x.Shape)
        {
            (_x, _dx, _z) = (x, dx, zLoss);
            _targets = targets;
            _loss = loss;
            _dy = dy;
            // Row number from a row's index: row-major strides over the dims other than the class dim.
            _rowStrides = new long[x.Shape.Length];
            for (long d = x.Shape.Length - 1, stride = 1; d >= 0; d--)
                if (d != x.Axis)
                {
                    _rowStrides[d] = stride;
                    stride *= x.Shape[d];
                }
        }

        protected override void Row(long[] index)
        {
            int classes = _x.Length;
            long row = 0;
            for (int d = 0; d < index.Length; d++) row += index[d] * _rowStrides[d];
            long target = _targets[row];
            if ((ulong)target >= (ulong)classes)
                throw new ArgumentOutOfRangeException("targets", $"cross_entropy: target {target} is outside [0, {classes})");
            var xs = new ReadOnlySpan<float>(At(_x, index), classes);
            Span<float> e;
            if (_dx is { } dx) e = new Span<float>(At(dx, index), classes);      // the gradient's row holds exp first
            else
            {
                if (t_exp is null || t_exp.Length < classes) t_exp = new float[classes];
                e = t_exp.AsSpan(0, classes);
            }
            float max = TensorPrimitives.Max(xs);
            TensorPrimitives.Subtract(xs, max, e);
            VectorExp.Exp(e, e);
            double sum = TensorPrimitives.Sum(e);
            double lse = max + Math.Log(sum);
            if (_dx is null)
            {
                _loss[row] = (float)(lse - xs[(int)target] + _z * lse * lse);
                return;
            }
            // softmax = exp(x − max) / Σ; the z-loss scales it by 1 + 2z·lse; the target's class loses dy.
            double dy = _dy[row];
            TensorPrimitives.Multiply(e, (float)(dy * (1 + 2 * _z * lse) / sum), e);
            e[(int)target] -= (float)dy;
        }
    }

    private sealed unsafe class SoftmaxGradRows(Rows dy, Rows y, Rows dx) : RowWork(y.Axis, y.Shape)
    {
        protected override void Row(long[] index)
        {
            int length = y.Length;
            var dys = new ReadOnlySpan<float>(At(dy, index), length);
            var ys = new ReadOnlySpan<float>(At(y, index), length);
            var dxs = new Span<float>(At(dx, index), length);
            TensorPrimitives.Subtract(dys, TensorPrimitives.Dot(dys, ys), dxs);
            TensorPrimitives.Multiply(dxs, ys, dxs);
        }
    }
}
