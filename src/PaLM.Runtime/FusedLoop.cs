using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;
using PaLM.Runtime.Native;
using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>
/// One generated loop-fusion kernel (see <c>PaLM.CodeGen.LoopFusion</c>): a chain of elementwise ops applied to one
/// chunk of its operands, through <see cref="Ew"/>'s span primitives, reading <see cref="LoopChunk.In"/> and
/// <see cref="LoopChunk.Scalar"/>, keeping intermediates in <see cref="LoopChunk.Temp"/> and writing
/// <see cref="LoopChunk.Out"/>.
/// </summary>
public delegate void LoopKernel(LoopChunk chunk);

/// <summary>
/// The window of a fused loop one kernel call works on: <see cref="Length"/> elements of every operand and result at the
/// same position of the loop (each operand's own address for it: its row and column in its own row layout), plus
/// per-thread scratch of that length. A chunk is small enough (<see cref="FusedLoop.ChunkElements"/>)
/// that a kernel's intermediates stay in the core's L1/L2 cache between its ops, which is the point of fusing: each
/// large operand is read from memory once and each result written once, instead of once per op.
/// </summary>
public sealed unsafe class LoopChunk
{
    private float*[] _in = [];
    private PrefetchStream[] _ahead = [];
    private float*[] _out = [];
    private int _inputs, _outputs, _tempCount;
    private float[] _scalars = [];
    private List<float[]> _temps = [];
    private LeadRows? _leads;
    private long _row;
    private int _tempOffset;

    private LoopChunk() { }

    // One chunk object per thread, its pointer arrays and scratch slots kept between loops (a team worker runs one
    // chunk at a time, and kernels never start another loop): a new 64 KiB array per slot per call was zeroed on every
    // call, most of a small loop's time, and the rest was managed garbage.
    [ThreadStatic] private static LoopChunk? t_chunk;

    /// <summary>This thread's chunk, set up for a loop with these operands, results, scalars, scratch slots and leads.</summary>
    internal static LoopChunk ForThread(int inputs, int outputs, float[] scalars, int temps, LeadRows? leads = null)
    {
        var c = t_chunk ??= new LoopChunk();
        if (c._in.Length < inputs) (c._in, c._ahead) = (new float*[inputs], new PrefetchStream[inputs]);
        if (c._out.Length < outputs) c._out = new float*[outputs];
        while (c._temps.Count < temps) c._temps.Add(new float[FusedLoop.ChunkElements]);
        (c._inputs, c._outputs, c._tempCount, c._scalars, c._leads) = (inputs, outputs, temps, scalars, leads);
        return c;
    }

    /// <summary>Drops the references a finished loop left (its scalars, its leads' values) until this thread's next loop.</summary>
    internal void Release() => (_inputs, _outputs, _tempCount, _scalars, _leads) = (0, 0, 0, [], null);

    /// <summary>Elements in this chunk.</summary>
    public int Length { get; private set; }

    /// <summary>Points every operand and result at element <paramref name="column"/> of row <paramref name="row"/> of
    /// its own rows (<see cref="FusedLoop"/>'s row layout, <paramref name="columns"/> elements a row), for
    /// <paramref name="length"/> elements; each input's prefetch stream runs on into the chunk this thread does next
    /// (row <paramref name="nextRow"/>, from <paramref name="nextColumn"/>; −1: none).</summary>
    internal void MoveTo(RowOperand[] inputs, RowOperand[] outputs, long row, long column, int length, long columns, long nextRow = -1, long nextColumn = 0)
    {
        for (int i = 0; i < _inputs; i++)
        {
            _in[i] = inputs[i].At(row, column);
            _ahead[i] = PrefetchStream.For(inputs[i], _in[i], length, columns, nextRow, nextColumn);
        }
        for (int i = 0; i < _outputs; i++) _out[i] = outputs[i].At(row, column);
        Length = length;
        _row = row;
        _tempOffset = 0;
    }

    /// <summary>Drops this chunk's first <paramref name="count"/> elements from every operand, result and scratch
    /// slot: a generated kernel's vector loop has done them, and its span primitives finish the rest.</summary>
    public void Skip(int count)
    {
        if ((uint)count > (uint)Length) throw new ArgumentOutOfRangeException(nameof(count));
        for (int i = 0; i < _inputs; i++) _in[i] += count;
        for (int i = 0; i < _outputs; i++) _out[i] += count;
        _tempOffset += count;
        Length -= count;
    }

    /// <summary>Operand <paramref name="i"/>'s prefetch stream for this chunk (<see cref="Ev.Prefetch"/>).</summary>
    public PrefetchStream Ahead(int i) => (uint)i < (uint)_inputs ? _ahead[i] : throw new ArgumentOutOfRangeException(nameof(i));

    /// <summary>Operand <paramref name="i"/>'s elements in this chunk.</summary>
    public ReadOnlySpan<float> In(int i) => (uint)i < (uint)_inputs ? new(_in[i], Length) : throw new ArgumentOutOfRangeException(nameof(i));

    /// <summary>Result <paramref name="i"/>'s elements in this chunk (written by the kernel; may be read back after).</summary>
    public Span<float> Out(int i) => (uint)i < (uint)_outputs ? new(_out[i], Length) : throw new ArgumentOutOfRangeException(nameof(i));

    /// <summary>Rank-0 operand <paramref name="i"/>, read once per call.</summary>
    public float Scalar(int i) => _scalars[i];

    /// <summary>Lead operand <paramref name="i"/> (over the loop's first few dims) at this chunk's index in those dims,
    /// which is the same for all its elements.</summary>
    public float Lead(int i) => _leads!.Value(i, _row);

    /// <summary>Scratch slot <paramref name="i"/> for an intermediate that no later op outside the kernel reads.</summary>
    public Span<float> Temp(int i) => (uint)i < (uint)_tempCount ? _temps[i].AsSpan(_tempOffset, Length) : throw new ArgumentOutOfRangeException(nameof(i));
}

/// <summary>
/// The lead operands of a fused loop walked as rows of <c>Columns</c> elements in row-major order: lead i's value for
/// loop row r is <c>Values[i][(RowOffset + r) / PerValue[i]]</c> (each of its values covers <c>PerValue[i]</c> rows).
/// </summary>
internal sealed record LeadRows(float[][] Values, long[] PerValue, long RowOffset)
{
    public float Value(int i, long row) => Values[i][(RowOffset + row) / PerValue[i]];
}

/// <summary>
/// Where a fused loop's vector pass prefetches one input, <see cref="Distance"/> elements ahead of the element it
/// loads, running on into the next chunk the thread will do: element i's line is <c>Near + i</c> while
/// <c>i &lt; Wrap</c>, else <c>Far + i</c>. Only for inputs walked as rows with gaps between them (a slice of a fused
/// product, a member of a parameter group): each row's run restarts the hardware prefetchers, which on rows of 3072
/// floats of a [2048, 7040] product made SwiGLU's forward loop 2.7–2.9 ms a layer against 1.9–2.0 with dense inputs;
/// prefetching 2 KiB ahead across the rows' ends read 2.1 (scratch harness, 2026-12-06, median of 22). Dense inputs
/// stream on their own and get none (<see cref="On"/> false).
/// </summary>
public readonly unsafe struct PrefetchStream
{
    /// <summary>Elements ahead of the load (2 KiB of fp32).</summary>
    public const int Distance = 512;

    internal readonly float* Near, Far;
    internal readonly int Wrap;

    /// <summary>Whether this input is prefetched.</summary>
    public readonly bool On;

    private PrefetchStream(float* near, float* far, int wrap)
    {
        Near = near;
        Far = far;
        Wrap = wrap;
        On = true;
    }

    /// <summary>The stream of <paramref name="op"/> for a chunk of <paramref name="length"/> elements from
    /// <paramref name="start"/>, followed by the chunk at (<paramref name="nextRow"/>, <paramref name="nextColumn"/>)
    /// (−1: none; the prefetches then run past the chunk's end, which x86 prefetches allow).</summary>
    internal static PrefetchStream For(RowOperand op, float* start, int length, long columns, long nextRow, long nextColumn)
    {
        if (!System.Runtime.Intrinsics.X86.Sse.IsSupported || op.RowStride == 0 || op.RowStride == columns) return default;
        int wrap = length - Distance;
        float* near = start + Distance;
        return new PrefetchStream(near, nextRow >= 0 ? op.At(nextRow, nextColumn) - wrap : near, wrap);
    }
}

/// <summary>One operand of a fused loop as rows of contiguous elements: row r starts <c>r · RowStride</c> elements after
/// <see cref="Base"/>. A dense operand is one row.</summary>
internal readonly unsafe record struct RowOperand(nint Base, long RowStride)
{
    public float* At(long row, long column) => (float*)Base + row * RowStride + column;
}

/// <summary>
/// Runs a fused elementwise loop over fp32 CPU tensors of one shape: splits them into chunks of
/// <see cref="ChunkElements"/> and hands contiguous ranges of chunks to the op's threads (libtorch's intra-op count
/// on the calling thread, so in-process devices keep their share of the cores).
/// </summary>
public static class FusedLoop
{
    /// <summary>Elements per kernel call: 64 KiB per fp32 operand, so a kernel's few scratch slots and the chunk's
    /// operands fit a core's L2 together. Measured on a 14M-element silu·up: 16K elements 5.2 ms, 4K 6.8-10 ms, 1K 9.9 ms.</summary>
    public const int ChunkElements = 16384;

    /// <summary>
    /// The shortest row a loop walks in place when an operand is a strided view (a slice of a fused projection's
    /// output, say): rows shorter than this would make chunks too short to pay for a kernel call, so such operands are
    /// copied into the loop's order first, as other non-dense ones are.
    /// </summary>
    public const int MinRowElements = 1024;

    // Each pointer must address at most int.MaxValue bytes through Tensor.bytes, so huge tensors run in segments.
    // Settable only so tests can exercise the segmented walk without gigabyte tensors.
    internal static long SegmentElements { get; set; } = 1L << 28;

    /// <summary>
    /// The kernel over every element of <paramref name="inputs"/> (all of one shape; fp32, CPU), with rank-0
    /// <paramref name="scalars"/>; returns a tensor of that shape per entry of <paramref name="donors"/>: operand
    /// <c>donors[j]</c> itself, written over, when it is ≥ 0 and laid out in the loop's order (code generation donates
    /// only buffers nothing reads afterwards, and only to a result its kernel writes after its last read of that
    /// operand), else a new tensor. A non-null <paramref name="destinations"/> entry (a slice of a join) is where that
    /// result goes instead, and what is returned for it.
    /// <para>
    /// Operands laid out densely in the loop's order are read in place; so are strided views whose elements come in
    /// rows of at least <see cref="MinRowElements"/> contiguous ones at a fixed row stride (a slice of a wider tensor's
    /// last dim); any other layout is copied into the loop's order first.
    /// </para>
    /// </summary>
    public static Tensor[] Run(LoopKernel kernel, int temps, Tensor[] inputs, Tensor[] scalars, int[] donors, Tensor?[]? destinations = null) =>
        Run(kernel, temps, inputs, scalars, [], donors, destinations);

    /// <summary>
    /// <see cref="Run(LoopKernel, int, Tensor[], Tensor[], int[], Tensor?[])"/> with <paramref name="leads"/>: operands
    /// whose shape is the loop's first few dims, read by the kernel through <see cref="LoopChunk.Lead"/>. The loop then
    /// walks its operands in row-major order (others are copied into it), in chunks that never cross from one lead
    /// value to the next.
    /// </summary>
    public static Tensor[] Run(LoopKernel kernel, int temps, Tensor[] inputs, Tensor[] scalars, Tensor[] leads, int[] donors, Tensor?[]? destinations = null)
    {
        if (inputs.Length == 0) throw new ArgumentException("a fused loop needs at least one full-size operand", nameof(inputs));
        // Plain loops, no LINQ and no Tensor.shape here: at palm-tiny's sizes the managed garbage of this set-up (4.7 KB a
        // call before) cost more than the loop, and set the garbage collector's pace for the whole step.
        var shape = TensorMemory.Shape(inputs[0]);
        long n = inputs[0].numel();
        foreach (var t in inputs) CheckOperand(t);
        foreach (var t in scalars) CheckOperand(t);
        foreach (var t in inputs)
            if (!TensorMemory.HasShape(t, shape)) throw new ArgumentException($"fused loop: operand shapes differ: [{string.Join(", ", shape)}] and [{string.Join(", ", t.shape)}]");
        foreach (var t in leads)
            if (t.dtype != ScalarType.Float32 || t.device_type != DeviceType.CPU || t.dim() == 0 || t.dim() >= shape.Length || !TensorMemory.HasShape(t, shape.AsSpan(0, (int)t.dim())))
                throw new ArgumentException($"fused loop: a lead operand must be float32 on the CPU over the first dims of [{string.Join(", ", shape)}], got {t.dtype} [{string.Join(", ", t.shape)}]");
        if (leads.Length > 0) return RunWithLeads(kernel, temps, inputs, scalars, leads, donors, destinations, shape, n);

        // Elementwise work is indifferent to order, so the loop walks memory in the order of the first operand laid out
        // densely (a permuted view, such as the attention scores einsum returns, counts): operands laid out alike are
        // read in place, others are read as strided rows or copied into that order, and new results are made in it.
        // Layouts are judged from each tensor's strides, fetched once: at palm-tiny's sizes a loop's own work is a few
        // microseconds, and a view made per check cost more than that.
        var strides = new long[inputs.Length + donors.Length][];
        for (int i = 0; i < inputs.Length; i++) strides[i] = TensorMemory.Strides(inputs[i]);
        long[]? order = null;
        for (int i = 0; i < inputs.Length && order is null; i++)
            if (MemoryOrder(strides[i]) is var o && InOrder(shape, strides[i], o)) order = o;
        order ??= MemoryOrder(strides[0]);
        var results = Results(inputs, strides, donors, destinations, shape, order);
        if (n == 0) return results;
        var values = ScalarValues(scalars);
        bool dense = true;
        for (int i = 0; i < results.Length; i++) strides[inputs.Length + i] = TensorMemory.Strides(results[i]);
        foreach (var st in strides) dense &= InOrder(shape, st, order);
        if (dense)
        {
            LaunchDense(kernel, temps, inputs, results, values, n);
            return results;
        }
        var owned = new List<Tensor>();
        try
        {
            if (RowLayout(shape, strides, order) is { Columns: >= MinRowElements } layout)
            {
                LaunchRows(kernel, temps, inputs, results, layout, values);
                return results;
            }
            // Operands the loop cannot walk in place are copied into its order; a destination it cannot walk in place
            // gets the result of a loop into a new buffer, copied in.
            var denseIn = new Tensor[inputs.Length];
            for (int i = 0; i < inputs.Length; i++)
                denseIn[i] = InOrder(shape, strides[i], order) ? inputs[i] : Own(inputs[i].permute(order).contiguous(), owned);
            var written = new Tensor[results.Length];
            for (int i = 0; i < results.Length; i++)
                written[i] = InOrder(shape, strides[inputs.Length + i], order) ? results[i] : Own(EmptyInOrder(shape, order), owned);
            LaunchDense(kernel, temps, denseIn, written, values, n);
            for (int i = 0; i < results.Length; i++)
                if (!ReferenceEquals(written[i], results[i])) results[i].copy_(written[i]);
        }
        finally
        {
            foreach (var t in owned) t.Dispose();
        }
        return results;
    }

    /// <summary>The loop over every operand where it lies, as the rows <paramref name="layout"/> (<see cref="RowLayout"/>)
    /// describes: inputs' strides first, then results'.</summary>
    private static void LaunchRows(LoopKernel kernel, int temps, Tensor[] inputs, Tensor[] results,
        (long Rows, long Columns, long[] Strides) layout, float[] values, LeadRows? leads = null)
    {
        var ins = new RowOperand[inputs.Length];
        var outs = new RowOperand[results.Length];
        for (int i = 0; i < ins.Length; i++) ins[i] = new RowOperand(TensorMemory.FirstElement(inputs[i]), layout.Strides[i]);
        for (int i = 0; i < outs.Length; i++) outs[i] = new RowOperand(TensorMemory.FirstElement(results[i]), layout.Strides[ins.Length + i]);
        Launch(kernel, temps, ins, outs, values, layout.Rows, layout.Columns, leads);
        GC.KeepAlive(inputs);
        GC.KeepAlive(results);
    }

    private static void CheckOperand(Tensor t)
    {
        if (t.dtype != ScalarType.Float32 || t.device_type != DeviceType.CPU)
            throw new NotSupportedException($"fused loop: operands must be float32 on the CPU, got {t.dtype} on {t.device_type}");
    }

    private static float[] ScalarValues(Tensor[] scalars)
    {
        if (scalars.Length == 0) return [];
        var values = new float[scalars.Length];
        for (int i = 0; i < values.Length; i++) values[i] = scalars[i].item<float>();
        return values;
    }

    /// <summary>The loop over <paramref name="n"/> elements of operands and results that are all dense in the loop's
    /// order (element i of each lies i floats after its first), in segments of at most <see cref="SegmentElements"/>.</summary>
    private static void LaunchDense(LoopKernel kernel, int temps, Tensor[] inputs, Tensor[] results, float[] values, long n)
    {
        var ins = new RowOperand[inputs.Length];
        var outs = new RowOperand[results.Length];
        for (long start = 0; start < n; start += SegmentElements)
        {
            nint offset = (nint)(start * sizeof(float));
            for (int i = 0; i < ins.Length; i++) ins[i] = new RowOperand(TensorMemory.FirstElement(inputs[i]) + offset, 0);
            for (int i = 0; i < outs.Length; i++) outs[i] = new RowOperand(TensorMemory.FirstElement(results[i]) + offset, 0);
            Launch(kernel, temps, ins, outs, values, 1, Math.Min(SegmentElements, n - start));
        }
        GC.KeepAlive(inputs);
        GC.KeepAlive(results);
    }

    /// <summary>The loop with lead operands: every operand in row-major order (copied there when it is not), rows of
    /// the finest lead's run of elements, each chunk within one row.</summary>
    private static Tensor[] RunWithLeads(LoopKernel kernel, int temps, Tensor[] inputs, Tensor[] scalars, Tensor[] leads, int[] donors, Tensor?[]? destinations, long[] shape, long n)
    {
        long[] order = [.. Enumerable.Range(0, shape.Length).Select(d => (long)d)];
        var results = Results(inputs, [.. inputs.Select(TensorMemory.Strides)], donors, destinations, shape, order);
        if (n == 0) return results;
        var values = ScalarValues(scalars);
        var leadValues = leads.Select(l =>
        {
            using var dense = l.contiguous();
            return dense.data<float>().ToArray();
        }).ToArray();
        var runs = leadValues.Select(v => n / v.Length).ToArray();   // elements each lead value covers
        // Operands not all in row-major order but all rows of contiguous elements at a row stride each (a parameter
        // group's member beside dense optimizer state), each row under one value of every lead: walked in place.
        long[][] allStrides = [.. inputs.Concat(results).Select(TensorMemory.Strides)];
        if (!allStrides.All(st => InOrder(shape, st, order)) && RowLayout(shape, allStrides, order) is { Columns: >= MinRowElements } layout
            && runs.All(r => r % layout.Columns == 0))
        {
            LaunchRows(kernel, temps, inputs, results, layout, values, new LeadRows(leadValues, [.. runs.Select(r => r / layout.Columns)], 0));
            return results;
        }
        long columns = runs.Min(), rows = n / columns;
        var perValue = runs.Select(r => r / columns).ToArray();
        var owned = new List<Tensor>();
        try
        {
            var written = results.Select(t => InOrder(t, order) ? t : Own(EmptyInOrder(shape, order), owned)).ToArray();
            var flatIn = inputs.Select(t => Flat(t, order, owned)).ToArray();
            var flatOut = written.Select(t => Flat(t, order, owned)).ToArray();
            // Each launch addresses at most SegmentElements elements of an operand: whole rows, or a part of one long row.
            RowOperand[] At(Tensor[] flat, long start, long length, long stride) =>
                [.. flat.Select(t => new RowOperand(Native.TensorMemory.Address(Own(t.narrow(0, start, length), owned)), stride))];
            long segment = SegmentElements;
            if (columns <= segment)
            {
                long per = segment / columns;
                for (long r = 0; r < rows; r += per)
                {
                    long count = Math.Min(per, rows - r);
                    Launch(kernel, temps, At(flatIn, r * columns, count * columns, columns), At(flatOut, r * columns, count * columns, columns),
                        values, count, columns, new LeadRows(leadValues, perValue, r));
                }
            }
            else
            {
                for (long r = 0; r < rows; r++)
                    for (long c = 0; c < columns; c += segment)
                    {
                        long length = Math.Min(segment, columns - c);
                        Launch(kernel, temps, At(flatIn, r * columns + c, length, length), At(flatOut, r * columns + c, length, length),
                            values, 1, length, new LeadRows(leadValues, perValue, r));
                    }
            }
            for (int i = 0; i < results.Length; i++)
                if (!ReferenceEquals(written[i], results[i])) results[i].copy_(written[i]);
        }
        finally
        {
            foreach (var t in owned) t.Dispose();
        }
        return results;
    }

    /// <summary>Where each result goes: its destination (a slice of a join), else the donated operand when that is laid
    /// out in the loop's order, else a new tensor in that order.</summary>
    private static Tensor[] Results(Tensor[] inputs, long[][] strides, int[] donors, Tensor?[]? destinations, long[] shape, long[] order)
    {
        var results = new Tensor[donors.Length];
        for (int i = 0; i < donors.Length; i++)
            results[i] = destinations?[i] is { } d ? CheckDestination(d, shape)
                : donors[i] >= 0 && InOrder(shape, strides[donors[i]], order) ? inputs[donors[i]] : EmptyInOrder(shape, order);
        return results;
    }

    private static Tensor CheckDestination(Tensor d, long[] shape) =>
        d.dtype == ScalarType.Float32 && d.device_type == DeviceType.CPU && TensorMemory.HasShape(d, shape) ? d
            : throw new ArgumentException($"fused loop: a destination must be float32 on the CPU of shape [{string.Join(", ", shape)}], got {d.dtype} [{string.Join(", ", d.shape)}]");

    /// <summary>
    /// The tensors (all of <paramref name="shape"/>, with these <paramref name="strides"/>) as <c>rows</c> rows of
    /// <c>columns</c> contiguous elements in the loop's order, with a row stride each; null when some tensor's layout is
    /// not of that form (or spans more than one pointer may).
    /// </summary>
    internal static (long Rows, long Columns, long[] Strides)? RowLayout(long[] shape, long[][] strides, long[] order)
    {
        // Size-1 dims have arbitrary strides and do not change the walk: leave them out.
        var dims = order.Where(d => shape[d] != 1).Select(d => (int)d).ToArray();
        if (dims.Length == 0) return null;
        var size = dims.Select(d => shape[d]).ToArray();
        // The longest run of trailing dims every tensor has contiguous (dims inner.. of each): one row.
        int inner = 0;
        foreach (var st in strides)
        {
            long expected = 1;
            int k = dims.Length;
            while (k > 0 && st[dims[k - 1]] == expected) expected *= size[--k];
            inner = Math.Max(inner, k);
        }
        if (inner == dims.Length) return null;
        long columns = size[inner..].Aggregate(1L, (a, b) => a * b);
        long rows = size[..inner].Aggregate(1L, (a, b) => a * b);
        var rowStrides = new long[strides.Length];
        for (int i = 0; i < strides.Length; i++)
        {
            // The outer dims must fold into one: each steps over exactly the one inside it.
            for (int d = 0; d < inner - 1; d++)
                if (strides[i][dims[d]] != strides[i][dims[d + 1]] * size[d + 1]) return null;
            rowStrides[i] = inner == 0 ? columns : strides[i][dims[inner - 1]];
            if (Native.TensorMemory.Extent(shape, strides[i]) > int.MaxValue / sizeof(float)) return null;
        }
        return (rows, columns, rowStrides);
    }

    /// <summary>The dims from the largest stride to the smallest (ties keep dim order).</summary>
    private static long[] MemoryOrder(long[] strides) => Array.ConvertAll(StableOrder.Descending(strides), d => (long)d);

    private static bool InOrder(long[] shape, long[] strides, long[] order) => TensorMemory.IsDenseInOrder(shape, strides, order);

    private static bool InOrder(Tensor t, long[] order) => InOrder(TensorMemory.Shape(t), TensorMemory.Strides(t), order);

    private static Tensor EmptyInOrder(long[] shape, long[] order)
    {
        bool identity = true;
        for (int i = 0; i < order.Length; i++) identity &= order[i] == i;
        if (identity) return torch.empty(shape, ScalarType.Float32);
        var inverse = new long[order.Length];
        var sizes = new long[order.Length];
        for (int i = 0; i < order.Length; i++) (inverse[order[i]], sizes[i]) = (i, shape[order[i]]);
        using var dense = torch.empty(sizes, ScalarType.Float32);
        return dense.permute(inverse);
    }

    /// <summary>t's elements as one dim in the loop's memory order: a view when t is laid out that way, else a copy.</summary>
    private static Tensor Flat(Tensor t, long[] order, List<Tensor> owned)
    {
        var p = Own(t.permute(order), owned);
        var c = p.is_contiguous() ? p : Own(p.contiguous(), owned);
        return Own(c.view(-1), owned);
    }

    private static Tensor Own(Tensor t, List<Tensor> owned)
    {
        owned.Add(t);
        return t;
    }

    /// <summary>Splits <paramref name="rows"/> × <paramref name="columns"/> elements into chunks of at most
    /// <see cref="ChunkElements"/> within a row and runs them on the op's threads.</summary>
    private static void Launch(LoopKernel kernel, int temps, RowOperand[] ins, RowOperand[] outs, float[] scalars, long rows, long columns, LeadRows? leads = null)
    {
        long perRow = (columns + ChunkElements - 1) / ChunkElements;
        long chunks = rows * perRow;
        int threads = Math.Min(OpenMpTeam.ThreadsFor(rows * columns, torch.get_num_threads()), (int)Math.Min(chunks, 256));
        OpenMpTeam.Run(new Job(kernel, temps, ins, outs, scalars, columns, perRow, chunks, leads), threads);
    }

    /// <summary>One fused loop's chunks, split evenly over however many workers run it.</summary>
    private sealed class Job(LoopKernel kernel, int temps, RowOperand[] ins, RowOperand[] outs, float[] scalars, long columns, long perRow, long chunks, LeadRows? leads) : TeamWork
    {
        protected override void Run(int worker, int workers)
        {
            var chunk = LoopChunk.ForThread(ins.Length, outs.Length, scalars, temps, leads);
            long first = chunks * worker / workers, last = chunks * (worker + 1) / workers;
            try
            {
                for (long c = first; c < last; c++)
                {
                    long row = c / perRow, column = c % perRow * ChunkElements;
                    long nextRow = c + 1 < last ? (c + 1) / perRow : -1, nextColumn = (c + 1) % perRow * ChunkElements;
                    chunk.MoveTo(ins, outs, row, column, (int)Math.Min(ChunkElements, columns - column), columns, nextRow, nextColumn);
                    kernel(chunk);
                }
            }
            finally
            {
                chunk.Release();
            }
        }
    }
}

/// <summary>
/// The elementwise primitives fused kernels are made of: fp32 spans (or a scalar) in, a span out, vectorized by
/// <see cref="TensorPrimitives"/>. A destination never overlaps a source (the kernel emitter guarantees it), which the
/// composite ops (<see cref="Silu"/>, <see cref="SiluGrad"/>) rely on. Semantics follow the runtime's TorchSharp ops
/// (<see cref="Rt"/>); transcendental functions agree with libtorch's to float rounding, not bit for bit.
/// </summary>
public static class Ew
{
    public static void Add(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Add(a, b, d);
    public static void Add(ReadOnlySpan<float> a, float b, Span<float> d) => TensorPrimitives.Add(a, b, d);
    public static void Add(float a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Add(b, a, d);
    public static void Sub(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Subtract(a, b, d);
    public static void Sub(ReadOnlySpan<float> a, float b, Span<float> d) => TensorPrimitives.Subtract(a, b, d);
    public static void Sub(float a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Subtract(a, b, d);
    public static void Mul(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Multiply(a, b, d);
    public static void Mul(ReadOnlySpan<float> a, float b, Span<float> d) => TensorPrimitives.Multiply(a, b, d);
    public static void Mul(float a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Multiply(b, a, d);
    public static void Div(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Divide(a, b, d);
    public static void Div(ReadOnlySpan<float> a, float b, Span<float> d) => TensorPrimitives.Divide(a, b, d);
    public static void Div(float a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Divide(a, b, d);

    // torch.maximum/minimum propagate NaN, as TensorPrimitives.Max/Min do.
    public static void Maximum(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Max(a, b, d);
    public static void Maximum(ReadOnlySpan<float> a, float b, Span<float> d) => TensorPrimitives.Max(a, b, d);
    public static void Maximum(float a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Max(b, a, d);
    public static void Minimum(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Min(a, b, d);
    public static void Minimum(ReadOnlySpan<float> a, float b, Span<float> d) => TensorPrimitives.Min(a, b, d);
    public static void Minimum(float a, ReadOnlySpan<float> b, Span<float> d) => TensorPrimitives.Min(b, a, d);

    public static void Neg(ReadOnlySpan<float> x, Span<float> d) => TensorPrimitives.Negate(x, d);
    public static void Exp(ReadOnlySpan<float> x, Span<float> d) => VectorExp.Exp(x, d);
    public static void Log(ReadOnlySpan<float> x, Span<float> d) => TensorPrimitives.Log(x, d);
    public static void Rsqrt(ReadOnlySpan<float> x, Span<float> d) => TensorPrimitives.ReciprocalSqrt(x, d);
    public static void Sqrt(ReadOnlySpan<float> x, Span<float> d) => TensorPrimitives.Sqrt(x, d);
    public static void Tanh(ReadOnlySpan<float> x, Span<float> d) => TensorPrimitives.Tanh(x, d);
    public static void Sigmoid(ReadOnlySpan<float> x, Span<float> d) => VectorExp.Sigmoid(x, d);
    public static void Square(ReadOnlySpan<float> x, Span<float> d) => TensorPrimitives.Multiply(x, x, d);

    /// <summary>x·sigmoid(x).</summary>
    public static void Silu(ReadOnlySpan<float> x, Span<float> d)
    {
        VectorExp.Sigmoid(x, d);
        TensorPrimitives.Multiply(d, x, d);
    }

    /// <summary>dy·s·(1 + x·(1 − s)), s = sigmoid(x): <see cref="Rt.SiluGrad"/>'s formula.</summary>
    public static void SiluGrad(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, Span<float> d)
    {
        VectorExp.Sigmoid(x, d);
        int i = 0, w = Vector<float>.Count;
        var one = Vector<float>.One;
        for (; i <= d.Length - w; i += w)
        {
            var s = new Vector<float>(d[i..]);
            (new Vector<float>(dy[i..]) * s * (one + new Vector<float>(x[i..]) * (one - s))).CopyTo(d[i..]);
        }
        for (; i < d.Length; i++) d[i] = dy[i] * d[i] * (1 + x[i] * (1 - d[i]));
    }
}

/// <summary>
/// Vector forms of the <see cref="Ew"/> primitives whose span form is one IEEE operation per element: a generated
/// kernel whose ops all have one here runs its chunk as a single pass over 16-float vectors (each operand loaded once,
/// every intermediate in a register) and leaves only the ragged end to the span primitives. Each form rounds exactly as
/// its span primitive does, so a kernel's results are the same bits either way (LoopVectorizationTests); exp, sigmoid
/// and silu too, since both forms run <see cref="VectorExp"/>, whose span form computes a ragged end as one more vector.
/// <para>
/// Why: the span primitives make a pass over the chunk per op, through the L2 cache; a chain of eight (the Adafactor
/// update's) ran 2-2.6x slower that way than as one pass on 14M elements (docs/performance.md). Ops whose span form
/// is its own approximation (log, tanh) or has its own NaN rules (maximum, minimum) have no form here, and kernels that
/// use them keep the span path.
/// </para>
/// </summary>
public static class Ev
{
    /// <summary>Whether the vector loop runs (a JIT-time constant): only where 512-bit vectors are hardware.</summary>
    public static bool Accelerated => Vector512.IsHardwareAccelerated;

    /// <summary>Floats per vector.</summary>
    public static int Width => Vector512<float>.Count;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(ReadOnlySpan<float> s, int i) => Vector512.LoadUnsafe(ref MemoryMarshal.GetReference(s), (nuint)i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector512<float> v, Span<float> s, int i) => v.StoreUnsafe(ref MemoryMarshal.GetReference(s), (nuint)i);

    /// <summary>Prefetches the line <see cref="PrefetchStream.Distance"/> elements past element <paramref name="i"/> of an
    /// input's stream (nothing for a dense input): a hint, no effect on results.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void Prefetch(in PrefetchStream p, int i)
    {
        if (System.Runtime.Intrinsics.X86.Sse.IsSupported && p.On)
            System.Runtime.Intrinsics.X86.Sse.Prefetch0(i < p.Wrap ? p.Near + i : p.Far + i);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Add(Vector512<float> a, float b) => a + Vector512.Create(b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Add(float a, Vector512<float> b) => b + Vector512.Create(a);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Sub(Vector512<float> a, Vector512<float> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Sub(Vector512<float> a, float b) => a - Vector512.Create(b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Sub(float a, Vector512<float> b) => Vector512.Create(a) - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Mul(Vector512<float> a, Vector512<float> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Mul(Vector512<float> a, float b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Mul(float a, Vector512<float> b) => b * a;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Div(Vector512<float> a, Vector512<float> b) => a / b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Div(Vector512<float> a, float b) => a / Vector512.Create(b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Div(float a, Vector512<float> b) => Vector512.Create(a) / b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Neg(Vector512<float> x) => -x;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Square(Vector512<float> x) => x * x;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Sqrt(Vector512<float> x) => Vector512.Sqrt(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Rsqrt(Vector512<float> x) => Vector512<float>.One / Vector512.Sqrt(x);

    // The span primitives compute exp and sigmoid with these same vector operations, tails included (VectorExp).
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Exp(Vector512<float> x) => VectorExp.Exp(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Sigmoid(Vector512<float> x) => VectorExp.Sigmoid(x);

    /// <summary><see cref="Ew.Silu"/>: sigmoid(x)·x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Silu(Vector512<float> x) => Sigmoid(x) * x;

    /// <summary><see cref="Ew.SiluGrad"/>: dy·s·(1 + x·(1 − s)), s = sigmoid(x), in its order of operations.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> SiluGrad(Vector512<float> dy, Vector512<float> x)
    {
        var s = Sigmoid(x);
        return dy * s * (Vector512<float>.One + x * (Vector512<float>.One - s));
    }
}
