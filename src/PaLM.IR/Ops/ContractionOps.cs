using System.Collections.Immutable;
using static PaLM.IR.OpHelpers;

namespace PaLM.IR;

/// <summary>
/// <c>einsum</c> over named subscripts. Each operand is labelled positionally by declared dims (a label may rename the
/// operand's dim, e.g. keys' <c>seq</c> as <c>kseq</c>, if the sizes agree); labels missing from the output are summed.
/// </summary>
internal static class ContractionOps
{
    public static void Register(Action<OpDef> add) => add(new OpDef
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
    });

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
        var operands = n.Attr<DimListsAttr>("operands").Lists;
        var sizes = new Dictionary<string, long>();
        for (int i = 0; i < operands.Length; i++)
            for (int k = 0; k < operands[i].Length; k++)
                sizes[operands[i][k]] = n.Inputs[i].Type.Dims[k].Size;
        var space = sizes.Values.Aggregate(1L, (a, b) => checked(a * b));
        return operands.Length == 1 ? space : checked(2L * (operands.Length - 1) * space);
    }

    /// <summary>Turns named subscripts into TorchSharp's letter form, letters given in order of first appearance.</summary>
    public static string LetterSpec(Node n)
    {
        var letters = new Dictionary<string, char>();
        string Word(IEnumerable<string> labels) => new(labels.Select(l =>
        {
            if (!letters.TryGetValue(l, out var ch))
            {
                var k = letters.Count;
                if (k >= 52) throw new InvalidOperationException("einsum: more than 52 distinct subscripts");
                ch = k < 26 ? (char)('a' + k) : (char)('A' + k - 26);
                letters[l] = ch;
            }
            return ch;
        }).ToArray());
        var ins = string.Join(",", n.Attr<DimListsAttr>("operands").Lists.Select(l => Word(l)));
        return ins + "->" + Word(n.Attr<DimsAttr>("output").Names);
    }
}
