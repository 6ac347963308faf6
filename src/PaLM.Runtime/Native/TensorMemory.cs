using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;

namespace PaLM.Runtime.Native;

/// <summary>Where a tensor's elements lie in native memory, for code that hands them to MPI or reads them through
/// pointers (fused loops, row kernels).</summary>
internal static class TensorMemory
{
    /// <summary>The address of a contiguous CPU tensor's first element (0 when it is empty). Tensor.bytes is a span over
    /// the tensor's own native memory (at most int.MaxValue bytes), so its first byte is the data pointer.</summary>
    public static unsafe nint Address(torch.Tensor t)
    {
        var span = t.bytes;
        return span.IsEmpty ? 0 : (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(span));
    }

    /// <summary>The address of any CPU tensor's first element, strided views included: the lowest address it touches,
    /// since no stride is negative in torch (0 when it is empty). One native call (at::Tensor::data_ptr, which adds
    /// the storage offset): a fused loop asks for it per operand per call, where making a view to read its bytes cost
    /// several calls and a finalizable handle.</summary>
    public static nint FirstElement(torch.Tensor t) => t.numel() == 0 ? 0 : THSTensor_data(t.Handle);

    [DllImport("LibTorchSharp")]
    private static extern nint THSTensor_data(nint handle);

    /// <summary>Elements from the tensor's first to its last, gaps included (a strided view spans more than its numel).</summary>
    public static long Extent(torch.Tensor t)
    {
        long extent = 1;
        for (int d = 0, rank = (int)t.dim(); d < rank; d++) extent += (t.size(d) - 1) * t.stride(d);
        return extent;
    }

    // Tensor.shape and Tensor.stride() return arrays through a native callback that allocates a delegate, a pinned
    // wrapper and a GC handle per call (144 bytes for a rank-3 tensor); size(d) and stride(d) allocate nothing. At
    // palm-tiny's sizes a runtime call's managed garbage, not its arithmetic, set the pace (gen1 pauses every few steps).

    /// <summary>The tensor's shape, one plain array.</summary>
    public static long[] Shape(torch.Tensor t)
    {
        var shape = new long[t.dim()];
        for (int d = 0; d < shape.Length; d++) shape[d] = t.size(d);
        return shape;
    }

    /// <summary>The tensor's strides (in elements), one plain array.</summary>
    public static long[] Strides(torch.Tensor t)
    {
        var strides = new long[t.dim()];
        for (int d = 0; d < strides.Length; d++) strides[d] = t.stride(d);
        return strides;
    }

    /// <summary>Whether a tensor of <paramref name="shape"/> with <paramref name="strides"/>, its dims taken in
    /// <paramref name="order"/>, is contiguous (size-1 dims ignored), as <c>t.permute(order).is_contiguous()</c>.</summary>
    public static bool IsDenseInOrder(long[] shape, long[] strides, long[] order)
    {
        long expected = 1;
        for (int i = order.Length - 1; i >= 0; i--)
        {
            long d = order[i];
            if (shape[d] == 1) continue;
            if (strides[d] != expected) return false;
            expected *= shape[d];
        }
        return true;
    }

    /// <summary>Whether two tensors have one shape, allocating nothing.</summary>
    public static bool SameShape(torch.Tensor a, torch.Tensor b)
    {
        if (a.dim() != b.dim()) return false;
        for (int d = 0, rank = (int)a.dim(); d < rank; d++) if (a.size(d) != b.size(d)) return false;
        return true;
    }

    /// <summary>Whether the tensor's shape is <paramref name="shape"/>, allocating nothing.</summary>
    public static bool HasShape(torch.Tensor t, ReadOnlySpan<long> shape)
    {
        if (t.dim() != shape.Length) return false;
        for (int d = 0; d < shape.Length; d++) if (t.size(d) != shape[d]) return false;
        return true;
    }

    /// <summary><see cref="Extent(torch.Tensor)"/> from a shape and its strides.</summary>
    public static long Extent(long[] shape, long[] strides)
    {
        long extent = 1;
        for (int d = 0; d < shape.Length; d++) extent += (shape[d] - 1) * strides[d];
        return extent;
    }
}
