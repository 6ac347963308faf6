using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Passes;

/// <summary>
/// Causal attention's einsums skip the blocks of the query/key triangle that can only hold zeros, as flash attention
/// does: an einsum becomes a <c>causal_einsum</c> (computed block by block, ContractionOps.CausalEinsum) when
/// <list type="bullet">
/// <item>an operand is zero wherever key &gt; query and the output keeps the query or the key label (exact: the
/// skipped terms are zero): the probabilities times the values and their gradient, and the score gradient times the
/// queries or keys; or</item>
/// <item>its output keeps both labels and every reader ignores what lies above the diagonal, so zeros may stand there:
/// the scores (read by the causal softmax, possibly through a scale) and the probabilities' cotangent (read by
/// softmax_grad, which multiplies it by probabilities that are zero there).</item>
/// </list>
/// Which values are zero above the diagonal is tracked forward from <c>causal_softmax</c> through softmax_grad, products
/// and the layer loops (saved probabilities stacked by the forward loop and sliced by the backward one). Runs on the
/// per-device program after <see cref="CausalSoftmax"/>, where query and key are whole on every device (causal_mask's
/// and causal_softmax's sharding rules keep them so).
/// <para>
/// "Zero" is exact for finite values: a skipped term 0·w is 0 unless w is infinite or NaN, where the dense product
/// would have given NaN. So an overflow in the values or in a gradient, above the diagonal, no longer poisons the
/// results through the masked probabilities (as in flash attention, which never reads those blocks either).
/// </para>
/// </summary>
public static class CausalBlocks
{
    public const string Name = "causal-blocks";

    /// <summary>Rows of the split label per block, at least: smaller blocks make matmuls too thin to run well.</summary>
    public const long MinBlock = 64;

    /// <summary>At most this many blocks: the work saved approaches half as (blocks + 1) / (2·blocks), the copies do not shrink.</summary>
    public const long MaxBlocks = 8;

    public static (Graph Graph, int Count) Run(Graph g)
    {
        // Values that are zero wherever key > query: value → (query dim, key dim), by the value's own dim names.
        var zero = new Dictionary<Value, (string Q, string K)>(ReferenceEqualityComparer.Instance);
        int count = 0;

        Block Rewrite(Block block)
        {
            var users = new Dictionary<Value, List<Node>>(ReferenceEqualityComparer.Instance);
            foreach (var n in block.Nodes)
                foreach (var v in n.Inputs)
                {
                    if (!users.TryGetValue(v, out var list)) users[v] = list = [];
                    list.Add(n);
                }
            var results = new HashSet<Value>(block.Results, ReferenceEqualityComparer.Instance);
            var nodes = new List<Node>(block.Nodes.Length);
            foreach (var n0 in block.Nodes)
            {
                var n = n0;
                if (n.Op.HasRegion) n = Loop(n);
                else if (n.Op.Name == "einsum" && Causal(n, users, results) is { } pair)
                {
                    n = new Node(OpTable.Get("causal_einsum"), n.Inputs, n.Outputs, n.Attrs
                        .SetItem("query", new DimsAttr([pair.Q])).SetItem("key", new DimsAttr([pair.K]))
                        .SetItem("blocks", new IntAttr(Blocks(n, pair))), [], n.Loc);
                    count++;
                }
                Track(n);
                nodes.Add(n);
            }
            return new Block(block.Args, [.. nodes], block.Results);
        }

        // A loop's body sees its stacked and invariant operands' facts; its stacked results carry the body's.
        Node Loop(Node n)
        {
            var body = n.Regions[0];
            var carried = (int)n.Attr<IntAttr>("carried").Value;
            for (int i = carried; i < n.Inputs.Length; i++)
                if (zero.TryGetValue(n.Inputs[i], out var f)) zero[body.Args[i]] = f;
            var rewritten = Rewrite(body);
            for (int r = carried; r < n.Outputs.Length; r++)
                if (zero.TryGetValue(rewritten.Results[r], out var f)) zero[n.Outputs[r]] = f;
            return new Node(n.Op, n.Inputs, n.Outputs, n.Attrs, [rewritten, .. n.Regions.Skip(1)], n.Loc);
        }

        void Track(Node n)
        {
            if (n.Outputs.Length != 1) return;
            var y = n.Outputs[0];
            switch (n.Op.Name)
            {
                case "causal_softmax":
                    zero[y] = (n.Attr<DimsAttr>("query").Names[0], n.Attr<DimsAttr>("key").Names[0]);
                    break;
                case "softmax_grad" when zero.TryGetValue(n.Inputs[1], out var f) && n.Attr<DimsAttr>("over").Names[0] == f.K:
                    zero[y] = f;
                    break;
                case "mul":
                    foreach (var v in n.Inputs)
                        if (zero.TryGetValue(v, out var p) && y.Type.Has(p.Q) && y.Type.Has(p.K)) { zero[y] = p; break; }
                    break;
                case "sharding_constraint" when zero.TryGetValue(n.Inputs[0], out var s):
                    zero[y] = s;
                    break;
            }
        }

        // The einsum's (query label, key label) when it may skip blocks, else null.
        (string Q, string K)? Causal(Node n, Dictionary<Value, List<Node>> users, HashSet<Value> results)
        {
            if (n.Inputs.Length != 2) return null;
            var labels = n.Attr<DimListsAttr>("operands").Lists;
            var output = n.Attr<DimsAttr>("output").Names;
            for (int i = 0; i < 2; i++)
            {
                if (!zero.TryGetValue(n.Inputs[i], out var f)) continue;
                var t = n.Inputs[i].Type;
                var (q, k) = (labels[i][t.IndexOf(f.Q)], labels[i][t.IndexOf(f.K)]);
                if (output.Contains(q) || output.Contains(k)) return (q, k);
            }
            // The output keeps both: every reader must ignore what lies above the diagonal.
            return IgnoredAbove(n.Outputs[0], users, results) is { } pair && output.Contains(pair.Q) && output.Contains(pair.K) ? pair : null;
        }

        // The (query, key) dims above whose diagonal no reader of v looks, or null.
        (string Q, string K)? IgnoredAbove(Value v, Dictionary<Value, List<Node>> users, HashSet<Value> results)
        {
            if (results.Contains(v) || !users.TryGetValue(v, out var readers)) return null;
            (string Q, string K)? agreed = null;
            foreach (var r in readers)
            {
                (string Q, string K)? pair = r.Op.Name switch
                {
                    "causal_softmax" => (r.Attr<DimsAttr>("query").Names[0], r.Attr<DimsAttr>("key").Names[0]),
                    // softmax_grad(dy = v, y): y · (dy − Σ dy·y) is zero where y is, whatever finite dy holds there.
                    "softmax_grad" when ReferenceEquals(r.Inputs[0], v) && !ReferenceEquals(r.Inputs[1], v)
                        && zero.TryGetValue(r.Inputs[1], out var f) && r.Attr<DimsAttr>("over").Names[0] == f.K => f,
                    // A scale by a scalar passes the question on to the scaled value's readers.
                    "mul" when r.Inputs.Count(x => ReferenceEquals(x, v)) == 1 && r.Inputs.Any(x => x.Type.Rank == 0)
                        => IgnoredAbove(r.Outputs[0], users, results),
                    _ => null,
                };
                if (pair is null || agreed is { } a && a != pair) return null;
                agreed = pair;
            }
            return agreed;
        }

        var body = Rewrite(g.Body);
        var result = BlockFacts.WithBody(g, body);
        Verifier.Verify(result);
        return (result, count);
    }

    private static long Blocks(Node n, (string Q, string K) pair)
    {
        var output = n.Attr<DimsAttr>("output").Names;
        var split = output.Contains(pair.Q) ? pair.Q : pair.K;
        var size = n.Outputs[0].Type.Dims[output.IndexOf(split)].Size;
        return Math.Clamp(size / MinBlock, 1, MaxBlocks);
    }
}
