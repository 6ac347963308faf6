using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

/// <summary>The runtime half of kept layer results: what a stack keeps, copies, hands out and lets go of.</summary>
public sealed class LayerStackRuntimeTests
{
    [Fact]
    public void KeptLayersOutliveTheIterationScopeAndTakenOnesAreLetGo()
    {
        Rt.Initialize();
        using var outer = NewDisposeScope();
        var stack = Rt.Layers(2);
        Tensor expected0, expected1;
        using (Rt.Scope())
        {
            var a = randn(3, 5);
            expected0 = a.clone().MoveToOuterDisposeScope();
            Rt.SetLayer(stack, 0, a);                 // kept without a copy: the same buffer
            var b = randn(3, 5);
            expected1 = b.clone().MoveToOuterDisposeScope();
            Rt.SetLayerCopy(stack, 1, b);             // a copy: later writes to b do not reach it
            b.add_(1);
        }
        using (Rt.Scope())
        {
            var seen = Rt.Select(stack, 0, 0);
            Assert.True(seen.eq(expected0).all().item<bool>());
            Assert.True(Rt.Select(stack, 0, 0).eq(expected0).all().item<bool>());   // Select leaves it in the stack
            Assert.True(Rt.TakeLayer(stack, 1).eq(expected1).all().item<bool>());
        }
        var error = Assert.Throws<InvalidOperationException>(() => Rt.TakeLayer(stack, 1));
        Assert.Contains("after it was taken", error.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => Rt.Select(stack, 1, 0));
    }
}
