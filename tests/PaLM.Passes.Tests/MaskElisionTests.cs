using PaLM.Dsl;
using PaLM.IR;

namespace PaLM.Passes.Tests;

/// <summary>
/// causal_mask's VJP drops the second mask when the -inf mask is read only by softmax over the key dim (softmax's VJP
/// already gives 0 there); anywhere else it keeps it. Values are checked by OpVjpTests' causal_mask case (autograd and
/// finite differences on the elided path); these check which path the rule takes.
/// </summary>
public sealed class MaskElisionTests
{
    private static int BackwardMasks(Graph grad) => Nodes(grad.Body).Count(n => n.Op.Name == "causal_mask" && n.Attr<FloatAttr>("fill").Value == 0);

    private static IEnumerable<Node> Nodes(Block b) => b.Nodes.SelectMany(n => n.Regions.SelectMany(Nodes).Prepend(n));

    [Fact]
    public void PalmAttentionNeedsNoBackwardMask()
    {
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var grad = Autodiff.GradientGraph(g, policy: RematPolicy.None);
        Assert.Equal(0, BackwardMasks(grad));
        Assert.Contains(Nodes(grad.Body), n => n.Op.Name == "causal_mask");
    }

    [Theory]
    [InlineData("probs = softmax(m, over=k)\noutput m\n", 1)]                        // m leaves the graph too
    [InlineData("probs = softmax(m, over=q)\n", 1)]                                  // softmax over the query dim
    [InlineData("probs = softmax(m, over=k) + softmax(m, over=k)\n", 0)]              // two softmax readers, both over k
    public void TheMaskStaysUnlessEveryReaderIsASoftmaxOverTheKeyDim(string tail, int masks)
    {
        var text = "dim q = 4, k = 4\nparam x: f32[q, k] = normal(1)\nm = causal_mask(x, query=q, key=k)\n" + tail
            + "loss = sum(probs * probs, over=[q, k])\noutput loss\n";
        var g = Frontend.CompileText("mask.palm", text);
        var grad = Autodiff.GradientGraph(g, policy: RematPolicy.None);
        Assert.Equal(masks, BackwardMasks(grad));
    }
}
