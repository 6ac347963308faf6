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

    /// <summary>The address of any fp32 CPU tensor's first element, strided views included: the lowest address it
    /// touches, since no stride is negative in torch. The span from it must start at the tensor's storage offset
    /// (TorchSharp's as_strided defaults to offset 0) and is at most int.MaxValue bytes (<see cref="Extent"/>).</summary>
    public static nint FirstElement(torch.Tensor t)
    {
        using var storage = t.as_strided([Extent(t)], [1], t.storage_offset());
        return Address(storage);
    }

    /// <summary>Elements from the tensor's first to its last, gaps included (a strided view spans more than its numel).</summary>
    public static long Extent(torch.Tensor t) => 1 + Enumerable.Range(0, (int)t.dim()).Sum(d => (t.shape[d] - 1) * t.stride(d));
}
