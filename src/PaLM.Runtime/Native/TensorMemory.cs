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
}
