using System.Collections.Immutable;
using static PaLM.IR.OpHelpers;

namespace PaLM.IR;

/// <summary>
/// <c>repeat</c>: run the body region <c>count</c> times (a scan, as JAX's <c>lax.scan</c>). Operands are
/// [carried..., stacked..., invariant...]: carried values flow from one iteration to the next and are the results;
/// stacked ones (per-layer parameters) have <c>count</c> as their first dim and the body sees one slice per iteration;
/// invariant ones are passed unchanged. The body is stored once whatever the count. The body may yield more values
/// than it carries: each extra one is stacked over the iterations into a result with <c>count</c> as its first dim
/// (lax.scan's ys; autodiff saves per-layer residuals this way). <c>reverse=1</c> runs the iterations last to first
/// (stacked operands are read and stacked results written at the iteration's own index), as the backward pass does.
/// </summary>
public static class ControlOps
{
    internal static void Register(Action<OpDef> add) => add(new OpDef
    {
        Name = "repeat",
        Doc = "runs its body count times, threading carried values through",
        HasRegion = true,
        Signature = Sig(1, OpSignature.Variadic, Dim("count"), new AttrSpec("carried", AttrKind.Int), new AttrSpec("stacked", AttrKind.Int),
            new AttrSpec("reverse", AttrKind.Int, new IntAttr(0))),
        Infer = c =>
        {
            var count = c.OneDim("count");
            var carried = (int)c.Int("carried");
            var stacked = (int)c.Int("stacked");
            if (carried < 1 || stacked < 0 || carried + stacked > c.Inputs.Length)
                throw InferContext.Fail($"repeat: bad operand split carried={carried} stacked={stacked} of {c.Inputs.Length}");
            for (int i = carried; i < carried + stacked; i++)
                if (c.Inputs[i].Rank == 0 || c.Inputs[i].Dims[0] != count)
                    throw InferContext.Fail($"repeat: stacked operand {i + 1} {c.Inputs[i]} must have '{count.Name}' as its first dim");
            var results = c.Inputs.Take(carried).ToList();
            if (!c.Regions.IsEmpty)
            {
                var yields = c.Regions[0].Results;
                if (yields.Length < carried)
                    throw InferContext.Fail($"repeat: the body yields {yields.Length} values but {carried} are carried");
                foreach (var y in yields.Skip(carried))
                {
                    if (y.Type.Has(count.Name))
                        throw InferContext.Fail($"repeat: stacked result {y} already has the dim '{count.Name}'");
                    results.Add(y.Type.WithDims(y.Type.Dims.Insert(0, count)));
                }
            }
            return [.. results];
        },
        Flops = _ => 0,
        Lower = _ => new LoopLowering(),
        Sharding = _ => ShardingRule.Region,
        Vjp = Vjps.NotDifferentiable("repeat is transposed as a whole loop by autodiff, not by a per-node rule"),
    });

    /// <summary>The body argument types a repeat node's operands imply.</summary>
    public static IEnumerable<TensorType> BodyArgTypes(Node n)
    {
        var carried = (int)n.Attr<IntAttr>("carried").Value;
        var stacked = (int)n.Attr<IntAttr>("stacked").Value;
        for (int i = 0; i < n.Inputs.Length; i++)
        {
            var t = n.Inputs[i].Type;
            yield return i >= carried && i < carried + stacked ? t.WithDims(t.Dims.RemoveAt(0)) : t;
        }
    }

    /// <summary>Whether the loop runs its iterations last to first.</summary>
    public static bool IsReverse(Node n) => n.Attrs.TryGetValue("reverse", out var a) && a is IntAttr { Value: not 0 };

    /// <summary>How many times the body runs: the size of the declared dim named by <c>count</c>.</summary>
    public static long Count(Node n, IReadOnlyDictionary<string, Dim> dims) => dims[n.Attr<DimsAttr>("count").Names[0]].Size;
}
