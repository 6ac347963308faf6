using System.Collections.Immutable;
using static PaLM.IR.OpHelpers;

namespace PaLM.IR;

/// <summary>
/// <c>einsum</c> over named subscripts. Each operand is labelled positionally by declared dims (a label may rename the
/// operand's dim, e.g. keys' <c>seq</c> as <c>kseq</c>, if the sizes agree); labels missing from the output are summed.
/// </summary>
internal static class ContractionOps
{
    public static void Register(Action<OpDef> add)
    {
        add(Einsum);
        add(CausalEinsum);
        add(CausalEinsumSoftmax);
        add(CausalEinsumSoftmaxGrad);
    }

    private static readonly OpDef Einsum = new()
    {
        Name = "einsum",
        Doc = "contraction over named subscripts: einsum(a[i, j], b[j, k] -> [i, k])",
        Signature = Sig(1, OpSignature.Variadic,
            new AttrSpec("operands", AttrKind.DimLists, FromSyntax: true), new AttrSpec("output", AttrKind.Dims, FromSyntax: true)),
        Infer = Infer,
        IsMatmul = true,
        Flops = Flops,
        Lower = c => new RtCall("Einsum", LArg.Lit(LetterSpec(c.Node)), new LAllInputs()),
        // Factors are the subscripts (which may rename an operand's dim); subscripts missing from the output reduce.
        Sharding = n => ShardingRule.FromLabels(n.Attr<DimListsAttr>("operands").Lists, [n.Attr<DimsAttr>("output").Names],
            n.Inputs.Concat(n.Outputs).SelectMany(v => v.Type.Dims)),
        Linearity = Linearity.Product,
        Vjp = EinsumVjp,
    };

    /// <summary>
    /// An einsum over causal attention's triangle, made after autodiff by <c>PaLM.Passes.CausalBlocks</c>: the labels
    /// <c>query</c> and <c>key</c> are split into <c>blocks</c> blocks of one of them (whichever the output keeps, the
    /// query where both are kept), and each block multiplies only the part of the other that can be nonzero: keys up
    /// to the block's last query, or queries from the block's first key. Exact when an operand is zero where
    /// key &gt; query (softmax probabilities under a causal mask, and their gradients); where both labels are in the
    /// output the blocks above the diagonal are written as zeros, which the pass allows only when every reader ignores
    /// them. FLOPs count what runs (about (blocks + 1) / (2·blocks) of the full product).
    /// </summary>
    private static readonly OpDef CausalEinsum = new()
    {
        Name = "causal_einsum",
        Doc = "einsum skipping the blocks of the query/key triangle where an operand is zero: causal_einsum(..., query=, key=, blocks=)",
        Signature = Sig(2, 2,
            new AttrSpec("operands", AttrKind.DimLists, FromSyntax: true), new AttrSpec("output", AttrKind.Dims, FromSyntax: true),
            new AttrSpec("query", AttrKind.Dim), new AttrSpec("key", AttrKind.Dim), new AttrSpec("blocks", AttrKind.Int)),
        Infer = c => CausalInfer(c, "causal_einsum", bothKept: false),
        IsMatmul = true,
        Flops = n => (long)(Flops(n) * CausalWork(n)),
        Lower = c => new RtCall("CausalEinsum", LArg.Lit(LetterSpec(c.Node)), LArg.Lit(Letter(c.Node, c.Node.Attr<DimsAttr>("query").Names[0])),
            LArg.Lit(Letter(c.Node, c.Node.Attr<DimsAttr>("key").Names[0])), LArg.Lit(c.Node.Attr<IntAttr>("blocks").Value), new LAllInputs()),
        Sharding = n => ShardingRule.FromLabels(n.Attr<DimListsAttr>("operands").Lists, [n.Attr<DimsAttr>("output").Names],
            n.Inputs.Concat(n.Outputs).SelectMany(v => v.Type.Dims), [n.Attr<DimsAttr>("query").Names[0], n.Attr<DimsAttr>("key").Names[0]]),
        Linearity = Linearity.Product,
        Vjp = Vjps.NotDifferentiable("causal_einsum is formed after autodiff from einsums whose VJPs are already taken"),
    };

    private static readonly AttrSpec[] CausalAttrs =
    [
        new AttrSpec("operands", AttrKind.DimLists, FromSyntax: true), new AttrSpec("output", AttrKind.Dims, FromSyntax: true),
        new AttrSpec("query", AttrKind.Dim), new AttrSpec("key", AttrKind.Dim), new AttrSpec("blocks", AttrKind.Int),
    ];

    /// <summary>
    /// <c>causal_softmax(causal_einsum(a, b), query, key)</c> as one op, made after <c>PaLM.Passes.CausalBlocks</c> by
    /// <c>PaLM.Passes.AttentionEpilogues</c>: attention's probabilities from its scores' product, each block of queries
    /// normalized right after its product while it is in cache (the runtime's direct plan; elsewhere the two ops in
    /// turn, with the same bits). The output keeps both subscripts.
    /// </summary>
    private static readonly OpDef CausalEinsumSoftmax = new()
    {
        Name = "causal_einsum_softmax",
        Doc = "causal_softmax over key of causal_einsum(a, b): causal_einsum_softmax(..., query=, key=, blocks=)",
        Signature = Sig(2, 2, CausalAttrs),
        Infer = c => CausalInfer(c, "causal_einsum_softmax", bothKept: true),
        IsMatmul = true,
        Flops = n => CausalProductFlops(n) + 5 * OutNumel(n) / 2,      // causal_softmax's own count
        Lower = c => new RtCall("CausalEinsumSoftmax", LArg.Lit(LetterSpec(c.Node)), LArg.Lit(Letter(c.Node, c.Node.Attr<DimsAttr>("query").Names[0])),
            LArg.Lit(Letter(c.Node, c.Node.Attr<DimsAttr>("key").Names[0])), LArg.Lit(c.Node.Attr<IntAttr>("blocks").Value),
            LArg.Lit((long)c.Out().IndexOf(c.Node.Attr<DimsAttr>("query").Names[0])), LArg.Lit((long)c.Out().IndexOf(c.Node.Attr<DimsAttr>("key").Names[0])),
            new LAllInputs()),
        FreshBuffer = true,
        Sharding = CausalSharding,
        Vjp = Vjps.NotDifferentiable("causal_einsum_softmax is formed after autodiff from ops whose VJPs are already taken"),
    };

    /// <summary>
    /// <c>softmax_grad(causal_einsum(a, b), y)</c> over the key as one op (<c>PaLM.Passes.AttentionEpilogues</c>): the
    /// probabilities' cotangent becomes the scores' cotangent block by block while in cache. The third operand is y,
    /// subscripted like the output; where the product skipped a block (zeros), the result is softmax_grad's −(Σ dy·y)·y,
    /// for any y.
    /// </summary>
    private static readonly OpDef CausalEinsumSoftmaxGrad = new()
    {
        Name = "causal_einsum_softmax_grad",
        Doc = "softmax_grad over key of causal_einsum(a, b) with the softmax's result y: causal_einsum_softmax_grad(a, b, y, query=, key=, blocks=)",
        Signature = Sig(3, 3, CausalAttrs),
        Infer = c =>
        {
            var lists = c.Attr<DimListsAttr>("operands").Lists;
            if (lists.Length != 3 || !lists[2].SequenceEqual(c.DimNames("output")))
                throw InferContext.Fail("causal_einsum_softmax_grad: the third operand (the softmax's result) must be subscripted like the output");
            return CausalInfer(c, "causal_einsum_softmax_grad", bothKept: true);
        },
        IsMatmul = true,
        Flops = n => CausalProductFlops(n) + 4 * OutNumel(n),          // softmax_grad's own count
        Lower = c => new RtCall("CausalEinsumSoftmaxGrad", LArg.Lit(LetterSpec(c.Node)), LArg.Lit(Letter(c.Node, c.Node.Attr<DimsAttr>("query").Names[0])),
            LArg.Lit(Letter(c.Node, c.Node.Attr<DimsAttr>("key").Names[0])), LArg.Lit(c.Node.Attr<IntAttr>("blocks").Value),
            LArg.Lit((long)c.Out().IndexOf(c.Node.Attr<DimsAttr>("key").Names[0])), new LAllInputs()),
        FreshBuffer = true,
        Sharding = CausalSharding,
        Vjp = Vjps.NotDifferentiable("causal_einsum_softmax_grad is formed after autodiff from ops whose VJPs are already taken"),
    };

    /// <summary>The checks every causal product makes: query and key two different subscripts, at least one block, and
    /// the output keeping the split subscript (both, for the softmax forms, whose rows run along the key).</summary>
    private static ImmutableArray<TensorType> CausalInfer(InferContext c, string name, bool bothKept)
    {
        // The two factors' subscripts: the softmax gradient's third operand (y, subscripted like the output) adds none.
        var labels = c.Attr<DimListsAttr>("operands").Lists.Take(2).SelectMany(l => l).ToHashSet();
        var (q, k) = (c.DimNames("query"), c.DimNames("key"));
        if (q.Length != 1 || k.Length != 1 || !labels.Contains(q[0]) || !labels.Contains(k[0]) || q[0] == k[0])
            throw InferContext.Fail($"{name}: query and key must be two different subscripts of its operands");
        if (c.Int("blocks") < 1) throw InferContext.Fail($"{name}: blocks must be at least 1");
        var output = c.DimNames("output");
        if (output.FirstOrDefault(l => !labels.Contains(l)) is { } stray)
            throw InferContext.Fail($"{name}: output subscript '{stray}' is in neither factor");
        if (bothKept) c.RequireFloat(0);
        if (bothKept ? !output.Contains(q[0]) || !output.Contains(k[0]) : !output.Contains(q[0]) && !output.Contains(k[0]))
            throw InferContext.Fail(bothKept
                ? $"{name}: the output must keep both the query and the key subscripts (its rows run along the key)"
                : $"{name}: the output must keep the query or the key subscript (blocks are split along it)");
        return Infer(c);
    }

    /// <summary>The two-factor product's multiply-adds over what the blocks compute (a third operand, the softmax forms'
    /// y, adds no subscript and is not multiplied into the product).</summary>
    private static long CausalProductFlops(Node n) =>
        (long)(2 * LabelSizes(n).Values.Aggregate(1L, (a, b) => checked(a * b)) * CausalWork(n));

    /// <summary>Query and key whole, as causal_einsum's rule keeps them, and the contracted subscripts whole too: the
    /// softmax (or its VJP) must see the finished sum, not one device's partial one.</summary>
    private static ShardingRule CausalSharding(Node n)
    {
        var lists = n.Attr<DimListsAttr>("operands").Lists;
        var output = n.Attr<DimsAttr>("output").Names;
        var contracted = lists.SelectMany(l => l).Where(l => !output.Contains(l)).Distinct();
        return ShardingRule.FromLabels(lists, [output], n.Inputs.Concat(n.Outputs).SelectMany(v => v.Type.Dims),
            [n.Attr<DimsAttr>("query").Names[0], n.Attr<DimsAttr>("key").Names[0], .. contracted]);
    }

    /// <summary>The fraction of the full product a causal_einsum computes: per block of the split label, the block's
    /// length times the range of the other label it multiplies (the runtime's split, Rt.CausalEinsum).</summary>
    public static double CausalWork(Node n)
    {
        var (q, k) = (n.Attr<DimsAttr>("query").Names[0], n.Attr<DimsAttr>("key").Names[0]);
        var sizes = LabelSizes(n);
        long Q = sizes[q], K = sizes[k], blocks = n.Attr<IntAttr>("blocks").Value;
        bool splitQuery = n.Attr<DimsAttr>("output").Names.Contains(q);
        long split = splitQuery ? Q : K, work = 0;
        for (long b = 0; b < blocks; b++)
        {
            long lo = split * b / blocks, hi = split * (b + 1) / blocks;
            work += (hi - lo) * (splitQuery ? Math.Min(K, hi) : Math.Max(0, Q - lo));
        }
        return (double)work / (Q * K);
    }

    /// <summary>The letter <see cref="LetterSpec"/> gives <paramref name="label"/>.</summary>
    private static string Letter(Node n, string label) => Letters(n)[label].ToString();

    /// <summary>
    /// Operand i's cotangent is the einsum of the result's cotangent with the other operands, producing operand i's
    /// subscripts (broadcast over any subscript only operand i has). Where operand i's subscripts rename its dims (keys'
    /// <c>seq</c> read as <c>kseq</c>), every subscript of the backward einsum is permuted so operand i's come out
    /// under their own names; a permutation of equal-size labels is still a valid einsum.
    /// </summary>
    private static IReadOnlyList<Value?> EinsumVjp(VjpContext c)
    {
        var n = c.Node;
        var labels = n.Attr<DimListsAttr>("operands").Lists;
        var output = n.Attr<DimsAttr>("output").Names;
        var result = new Value?[n.Inputs.Length];
        if (c.Dy() is not { } dy) return result;
        for (int i = 0; i < n.Inputs.Length; i++)
        {
            if (!c.Wants(i)) continue;
            var mine = labels[i];
            var target = n.Inputs[i].Type;
            var pi = new Dictionary<string, string>();
            string P(string l) => pi.TryGetValue(l, out var x) ? x : l;
            for (int k = 0; k < mine.Length; k++)
            {
                var want = target.Dims[k].Name;
                if (P(mine[k]) == want) continue;
                // The label currently mapped to `want` (if any) takes mine[k]'s old image: a swap keeps pi a bijection.
                var holder = pi.FirstOrDefault(kv => kv.Value == want).Key ?? (pi.ContainsKey(want) ? null : want);
                var old = P(mine[k]);
                pi[mine[k]] = want;
                if (holder is not null) pi[holder] = old;
            }
            var available = output.Concat(labels.Where((_, j) => j != i).SelectMany(l => l)).ToHashSet();
            var present = mine.Where(available.Contains).ToImmutableArray();
            var operands = new List<Value> { dy };
            var lists = new List<ImmutableArray<string>> { output.Select(P).ToImmutableArray() };
            for (int j = 0; j < n.Inputs.Length; j++)
            {
                if (j == i) continue;
                operands.Add(c.X(j));
                lists.Add([.. labels[j].Select(P)]);
            }
            var g = c.Op("einsum", operands, ("operands", new DimListsAttr([.. lists])), ("output", new DimsAttr([.. present.Select(P)])));
            result[i] = present.Length == mine.Length ? g : c.BroadcastTo(g, target);
        }
        return result;
    }

    private static ImmutableArray<TensorType> Infer(InferContext c)
    {
        var operands = c.Attr<DimListsAttr>("operands").Lists;
        var output = c.DimNames("output");
        if (operands.Length != c.Inputs.Length)
            throw InferContext.Fail($"einsum: {c.Inputs.Length} operands but {operands.Length} subscript lists");
        c.SameDType("operand");
        var seen = new HashSet<string>();
        for (int i = 0; i < operands.Length; i++)
        {
            var labels = operands[i];
            var t = c.Inputs[i];
            if (labels.Length != t.Rank)
                throw InferContext.Fail($"einsum: operand {i + 1} {t} has rank {t.Rank} but {labels.Length} subscripts [{string.Join(", ", labels)}]");
            for (int k = 0; k < labels.Length; k++)
            {
                var label = c.Dim(labels[k]);
                if (labels.Take(k).Contains(labels[k]))
                    throw InferContext.Fail($"einsum: subscript '{labels[k]}' repeated in operand {i + 1} (diagonals are not supported)");
                if (label.Size != t.Dims[k].Size)
                    throw InferContext.Fail($"einsum: shape mismatch: operand {i + 1} dim {k + 1} '{t.Dims[k].Name}' has size {t.Dims[k].Size} but subscript '{label.Name}' has size {label.Size}");
                seen.Add(labels[k]);
            }
        }
        for (int k = 0; k < output.Length; k++)
        {
            if (output.Take(k).Contains(output[k]))
                throw InferContext.Fail($"einsum: output subscript '{output[k]}' repeated");
            if (!seen.Contains(output[k]))
                throw InferContext.Fail($"einsum: output subscript '{output[k]}' appears in no operand");
        }
        return One(new TensorType(c.Inputs[0].DType, output.Select(c.Dim).ToImmutableArray()));
    }

    /// <summary>Multiply-adds over the full iteration space, two FLOPs each (one per extra operand).</summary>
    private static long Flops(Node n)
    {
        var space = LabelSizes(n).Values.Aggregate(1L, (a, b) => checked(a * b));
        var operands = n.Inputs.Length;
        return operands == 1 ? space : checked(2L * (operands - 1) * space);
    }

    /// <summary>Each subscript's size, read off the operand dims it labels.</summary>
    private static Dictionary<string, long> LabelSizes(Node n)
    {
        var operands = n.Attr<DimListsAttr>("operands").Lists;
        var sizes = new Dictionary<string, long>();
        for (int i = 0; i < operands.Length; i++)
            for (int k = 0; k < operands[i].Length; k++)
                sizes[operands[i][k]] = n.Inputs[i].Type.Dims[k].Size;
        return sizes;
    }

    /// <summary>Turns named subscripts into TorchSharp's letter form, letters given in order of first appearance.</summary>
    public static string LetterSpec(Node n)
    {
        var letters = Letters(n);
        string Word(IEnumerable<string> labels) => new([.. labels.Select(l => letters[l])]);
        return string.Join(",", n.Attr<DimListsAttr>("operands").Lists.Select(l => Word(l))) + "->" + Word(n.Attr<DimsAttr>("output").Names);
    }

    /// <summary>Each subscript's letter: a-z then A-Z in order of first appearance, operands first, then the output.</summary>
    private static Dictionary<string, char> Letters(Node n)
    {
        var order = n.Attr<DimListsAttr>("operands").Lists.SelectMany(l => l).Concat(n.Attr<DimsAttr>("output").Names).Distinct().ToList();
        if (order.Count > 52) throw new InvalidOperationException("einsum: more than 52 distinct subscripts");
        return order.Select((l, k) => (l, k < 26 ? (char)('a' + k) : (char)('A' + k - 26))).ToDictionary(p => p.l, p => p.Item2);
    }
}
