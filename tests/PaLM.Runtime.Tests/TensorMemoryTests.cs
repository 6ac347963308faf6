using PaLM.Runtime.Native;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

/// <summary>
/// <see cref="TensorMemory.FirstElement"/> reads libtorch's data pointer directly: for views (slices, permutations,
/// selections, broadcasts) it must be the address of element [0, ..., 0], which is where the base tensor's own
/// elements put it, and 0 for an empty tensor.
/// </summary>
public sealed class TensorMemoryTests
{
    [Fact]
    public void TheFirstElementOfAViewIsWhereItsBaseHoldsIt()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var x = arange(2 * 5 * 7, ScalarType.Float32).reshape(2, 5, 7);
        nint base0 = TensorMemory.Address(x);
        Assert.Equal(base0, TensorMemory.FirstElement(x));
        (Tensor View, long Offset)[] views =
        [
            (x.narrow(2, 3, 4), 3),
            (x.narrow(1, 2, 3).narrow(2, 1, 5), 2 * 7 + 1),
            (x.permute(2, 0, 1), 0),
            (x.select(0, 1), 5 * 7),
            (x.select(2, 6).unsqueeze(0).expand(3, 2, 5), 6),
        ];
        foreach (var (view, offset) in views)
        {
            Assert.Equal(base0 + (nint)(offset * sizeof(float)), TensorMemory.FirstElement(view));
            // The element there is the view's [0, ..., 0].
            unsafe { Assert.Equal(view.flatten()[0].item<float>(), *(float*)TensorMemory.FirstElement(view)); }
            Assert.Equal(view.numel() == 0 ? 0 : 1 + Enumerable.Range(0, (int)view.dim()).Sum(d => (view.shape[d] - 1) * view.stride(d)), TensorMemory.Extent(view));
        }
        Assert.Equal(0, TensorMemory.FirstElement(x.narrow(1, 0, 0)));
    }
}
