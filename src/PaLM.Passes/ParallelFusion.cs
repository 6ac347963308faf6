using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Passes;

/// <summary>What the fusion pass did, per block kind.</summary>
public sealed record FusionReport(int SiblingGroups, int SiblingEinsums, int SumGroups, int SumEinsums, int Reassociated)
{
    public override string ToString() =>
        $"{SiblingEinsums} einsums sharing an operand fused into {SiblingGroups}; {SumEinsums} summed einsums fused into {SumGroups}; {Reassociated} sums regrouped";
}

/// <summary>
/// PaLM's parallel-layer fusion (section 2 of the paper: "the MLP and attention input matrix multiplications can be
/// fused, and likewise the output ones"), in two steps:
/// <list type="number">
/// <item><see cref="Reassociate"/>, on the global graph before autodiff: <c>x + attn + mlp</c> becomes
/// <c>x + (attn + mlp)</c>, so that under model parallelism the two branches' partial sums are added first and one
/// reduce-scatter (or all-reduce) serves both.</item>
/// <item><see cref="Run"/>, on the per-device program after partitioning (as XLA merges dots after SPMD
/// partitioning), so it is correct under every sharding: einsums that read the same operand become one einsum over
/// the other operands concatenated (q, k, v, gate, up: one matmul; in the backward, their five weight gradients), and
/// a sum of einsums becomes one einsum contracting over the concatenation of their contracted dims (attention out +
/// MLP down: one matmul; in the backward, the input gradients).</item>
/// </list>
/// The fused einsum's result is split and reshaped back, so consumers are untouched. New dims are named
/// <c>fused.N...</c>.
/// </summary>
public static class ParallelFusion
{
    public const string Name = "fuse-parallel";

    // ---- step 1: regroup sums of contractions (global graph) ------------------------------------------------------

    /// <summary>
    /// Rewrites <c>add(add(x, a), b)</c> where a and b are einsum results used only there (and x is not) into
    /// <c>add(x, add(a, b))</c>, in every block. Returns the graph and how many sums were regrouped.
    /// </summary>
    public static (Graph Graph, int Count) Reassociate(Graph g)
    {
        int count = 0;
        var b = GraphBuilder.Continuing(g);
        Block Rewrite(Block block)
        {
            var uses = BlockFacts.Uses(block.Nodes, block.Results);
            var producer = BlockFacts.Producers(block.Nodes);
            bool IsEinsumOnce(Value v) => producer.TryGetValue(v, out var p) && p.Op.Name == "einsum" && uses.GetValueOrDefault(v) == 1;
            var nodes = new List<Node>();
            var replaced = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
            Value R(Value v) => replaced.TryGetValue(v, out var r) ? r : v;
            foreach (var n0 in block.Nodes)
            {
                var n = n0.Regions.IsEmpty ? Remap(n0, R) : new Node(n0.Op, [.. n0.Inputs.Select(R)], n0.Outputs, n0.Attrs, [.. n0.Regions.Select(Rewrite)], n0.Loc);
                if (n.Op.Name == "add" && producer.TryGetValue(n0.Inputs[0], out var inner) && inner.Op.Name == "add"
                    && uses.GetValueOrDefault(n0.Inputs[0]) == 1 && IsEinsumOnce(inner.Inputs[1]) && !IsEinsumOnce(inner.Inputs[0])
                    && IsEinsumOnce(n0.Inputs[1]) && inner.Outputs[0].Type.Equals(n0.Outputs[0].Type)
                    && inner.Inputs[1].Type.Equals(n0.Inputs[1].Type) && inner.Inputs[0].Type.Equals(n0.Outputs[0].Type))
                {
                    // The inner add (x + a) is dropped; a + b, then x + (a + b) under the outer add's result value.
                    var innerIndex = nodes.FindIndex(m => m.Outputs[0] == R(n0.Inputs[0]));
                    var x = nodes[innerIndex].Inputs[0];
                    var a = nodes[innerIndex].Inputs[1];
                    nodes.RemoveAt(innerIndex);
                    var ab = b.Apply(nodes, n.Op, [a, R(n0.Inputs[1])], n.Attrs, [n0.Outputs[0].Name + ".branches"], n.Loc)[0];
                    nodes.Add(new Node(n.Op, [x, ab], n0.Outputs, n.Attrs, [], n.Loc));
                    count++;
                    continue;
                }
                nodes.Add(n);
            }
            return new Block(block.Args, [.. nodes], [.. block.Results.Select(R)]);
        }
        var body = Rewrite(g.Body);
        var result = BlockFacts.WithBody(g, body);
        Verifier.Verify(result);
        return (result, count);
    }

    // ---- step 2: merge einsums (per-device program) ----------------------------------------------------------------

    /// <summary>Fuses einsums in every block of a (per-device) graph; the result is verified by the caller.</summary>
    public static (Graph Graph, FusionReport Report) Run(Graph g)
    {
        var f = new Fuser(g);
        var body = f.Block(g.Body);
        var dims = g.Dims.Concat(f.NewDims).ToImmutableArray();
        var result = BlockFacts.WithBody(g, body, dims);
        Verifier.Verify(result);
        return (result, new FusionReport(f.SiblingGroups, f.SiblingEinsums, f.SumGroups, f.SumEinsums, 0));
    }

    private sealed class Fuser
    {
        private readonly Dictionary<string, Dim> _dims;
        private readonly GraphBuilder _b;
        private int _fused;

        public Fuser(Graph g)
        {
            _dims = g.Dims.ToDictionary(d => d.Name);
            _b = GraphBuilder.Continuing(g, _dims);
        }

        public List<Dim> NewDims { get; } = [];
        private readonly Dictionary<Value, Value> _renamed = new(ReferenceEqualityComparer.Instance);
        public int SiblingGroups, SiblingEinsums, SumGroups, SumEinsums;

        public Block Block(Block block)
        {
            var nodes = block.Nodes.Select(n => n.Regions.IsEmpty ? n : new Node(n.Op, n.Inputs, n.Outputs, n.Attrs, [.. n.Regions.Select(Block)], n.Loc)).ToList();
            _renamed.Clear();
            nodes = FuseSiblings(nodes, block);
            nodes = FuseSums(nodes, block);
            nodes = FlattenConcats(nodes, block);
            nodes = OrderSumPieces(nodes, block);
            nodes = DedupeConcats(nodes);
            // A fused einsum's result may also be yielded by the block (a residual saved for the backward pass).
            Value Final(Value v) { while (_renamed.TryGetValue(v, out var r)) v = r; return v; }
            return new Block(block.Args, [.. Schedule(nodes, block)], [.. block.Results.Select(Final)]);
        }

        // ---- einsums sharing an operand -------------------------------------------------------------------------

        /// <summary>A two-operand einsum viewed from its operand <c>Shared</c>: the other operand's own subscripts are
        /// kept, the subscripts it shares with the shared operand are all contracted.</summary>
        private sealed record Sibling(Node Node, int Shared, ImmutableArray<string> SharedLabels, ImmutableArray<string> Contracted, ImmutableArray<string> Own)
        {
            public Value X => Node.Inputs[Shared];
            public Value Y => Node.Inputs[1 - Shared];
        }

        private static Sibling? AsSibling(Node n, int shared)
        {
            if (n.Op.Name != "einsum" || n.Inputs.Length != 2 || !LabelsAreNames(n)) return null;
            var lists = n.Attr<DimListsAttr>("operands").Lists;
            var output = n.Attr<DimsAttr>("output").Names;
            var (xl, yl) = (lists[shared], lists[1 - shared]);
            var contracted = yl.Where(xl.Contains).ToImmutableArray();
            if (contracted.IsEmpty || contracted.Any(output.Contains)) return null;
            var own = yl.Where(l => !xl.Contains(l)).ToImmutableArray();
            if (own.IsEmpty || own.Any(l => !output.Contains(l)) || xl.Any(l => !contracted.Contains(l) && !output.Contains(l))) return null;
            return new Sibling(n, shared, xl, [.. xl.Where(contracted.Contains)], own);
        }

        private List<Node> FuseSiblings(List<Node> nodes, Block block)
        {
            var candidates = nodes.SelectMany(n => new[] { AsSibling(n, 0), AsSibling(n, 1) }).OfType<Sibling>()
                .GroupBy(s => (s.X, Key: string.Join(",", s.SharedLabels) + "|" + string.Join(",", s.Contracted)))
                .Select(gr => gr.GroupBy(s => s.Node).Select(x => x.First()).ToList())
                .Where(gr => gr.Count > 1 && gr.Select(s => s.Y).Distinct().Count() == gr.Count)
                .OrderByDescending(gr => gr.Count).ToList();
            var taken = new HashSet<Node>();
            foreach (var group0 in candidates)
            {
                var group = group0.Where(s => !taken.Contains(s.Node)).ToList();
                // A member whose other operand is computed from another member's result cannot join (a cycle).
                var downstream = Downstream(nodes, group.Select(s => s.Node));
                group = group.Where(s => !downstream.Contains(s.Y) && !downstream.Contains(s.X)).ToList();
                if (group.Count < 2 || group.Select(s => s.Y.Type.DType).Distinct().Count() != 1) continue;
                foreach (var s in group) taken.Add(s.Node);
                var at = group.Min(s => nodes.IndexOf(s.Node));
                var origin = new Origins(nodes, block);
                // Weight gradients by the gradient they become, else products by the weight they read.
                var keys = group.Select(s => origin.Result(s.Node.Outputs[0])).ToList();
                if (keys.Any(k => k < 0)) keys = [.. group.Select(s => origin.Arg(s.Y))];
                if (keys.All(k => k >= 0)) group = [.. group.Select((s, i) => (s, i)).OrderBy(p => keys[p.i]).Select(p => p.s)];
                var fused = new List<Node>();
                var id = _fused++;
                // Each other operand as [contracted..., own flattened], joined along a new dim.
                var pieces = group.Select((s, i) => Flatten(fused, s.Y, s.Contracted, s.Own, $"fused.{id}.{i}", ownFirst: false)).ToList();
                var total = Dim($"fused.{id}", pieces.Sum(p => p.Flat.Size));
                var cat = Apply(fused, "concat", [.. pieces.Select(p => p.Value)], $"fused{id}.w",
                    ("along", new DimsAttr([.. pieces.Select(p => p.Flat.Name)])), ("as", new DimsAttr([total.Name])));
                var first = group[0];
                var keep = first.SharedLabels.Where(l => !first.Contracted.Contains(l)).ToImmutableArray();
                // The joined dim goes where every member's own dims stand in its result: first for weight gradients
                // ([own..., keep...], as the weights are laid out), so the split pieces are contiguous blocks already in
                // the weights' layout instead of transposed views that every use (the per-layer gradient stack) copies.
                bool ownFirst = group.All(s => s.Node.Outputs[0].Type.Dims.Select(d => d.Name).SequenceEqual([.. s.Own, .. keep]));
                var product = Apply(fused, "einsum", [first.X, cat], $"fused{id}",
                    ("operands", new DimListsAttr([first.SharedLabels, [.. first.Contracted, total.Name]])),
                    ("output", new DimsAttr(ownFirst ? [total.Name, .. keep] : [.. keep, total.Name])));
                var parts = _b.Apply(fused, OpTable.Get("split"), [product],
                    GraphBuilder.Attrs(("along", new DimsAttr([total.Name])), ("into", new DimsAttr([.. pieces.Select(p => p.Flat.Name)]))),
                    [.. group.Select(s => s.Node.Outputs[0].Name + ".part")], first.Node.Loc);
                var rename = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
                for (int i = 0; i < group.Count; i++)
                {
                    var target = group[i].Node.Outputs[0];
                    var unflat = Apply(fused, "reshape", [parts[i]], target.Name + ".unflat",
                        ("to", new DimsAttr(ownFirst ? [.. group[i].Own, .. keep] : [.. keep, .. group[i].Own])));
                    rename[target] = Arrange(fused, unflat, target);
                }
                SiblingGroups++;
                SiblingEinsums += group.Count;
                nodes = Replace(nodes, group.Select(s => s.Node).ToHashSet(), at, fused, rename);
            }
            return nodes;
        }

        // ---- sums of einsums --------------------------------------------------------------------------------------

        /// <summary>A two-operand einsum as U[outU..., c...] x V[c..., outV...] -> output: c all contracted.</summary>
        private sealed record Term(Node Node, int U, ImmutableArray<string> OutU, ImmutableArray<string> OutV, ImmutableArray<string> Contracted);

        private static IEnumerable<Term> AsTerms(Node n)
        {
            if (n.Op.Name != "einsum" || n.Inputs.Length != 2 || !LabelsAreNames(n)) yield break;
            var lists = n.Attr<DimListsAttr>("operands").Lists;
            var output = n.Attr<DimsAttr>("output").Names;
            var contracted = lists[0].Where(lists[1].Contains).ToImmutableArray();
            if (contracted.IsEmpty || contracted.Any(output.Contains)) yield break;
            if (lists.SelectMany(l => l).Where(l => !contracted.Contains(l)).Any(l => !output.Contains(l))) yield break;
            for (int u = 0; u < 2; u++)
                yield return new Term(n, u, [.. lists[u].Where(output.Contains)], [.. lists[1 - u].Where(output.Contains)], contracted);
        }

        private List<Node> FuseSums(List<Node> nodes, Block block)
        {
            while (true)
            {
                var uses = BlockFacts.Uses(nodes, block.Results);
                var producer = BlockFacts.Producers(nodes);
                (Node Add, Term A, Term B)? found = null;
                foreach (var add in nodes.Where(n => n.Op.Name == "add" && n.Inputs[0].Type.Equals(n.Inputs[1].Type) && n.Inputs[0] != n.Inputs[1]))
                {
                    if (!add.Inputs.All(v => producer.TryGetValue(v, out var p) && p.Op.Name == "einsum" && uses.GetValueOrDefault(v) == 1)) continue;
                    if (block.Results.Contains(add.Inputs[0]) || block.Results.Contains(add.Inputs[1])) continue;
                    var (pa, pb) = (producer[add.Inputs[0]], producer[add.Inputs[1]]);
                    if (pa.Attr<DimsAttr>("output").Names.SequenceEqual(pb.Attr<DimsAttr>("output").Names) is false) continue;
                    foreach (var ta in AsTerms(pa))
                        foreach (var tb in AsTerms(pb))
                            if (found is null && ta.OutU.SequenceEqual(tb.OutU) && ta.OutV.SequenceEqual(tb.OutV)
                                && pa.Inputs[ta.U].Type.DType == pb.Inputs[tb.U].Type.DType)
                                found = (add, ta, tb);
                    if (found is not null) break;
                }
                if (found is not { } hit) return nodes;
                var fused = new List<Node>();
                var id = _fused++;
                var terms = new[] { hit.A, hit.B };
                var us = terms.Select((t, i) => Flatten(fused, t.Node.Inputs[t.U], t.OutU, t.Contracted, $"fused.{id}.{i}", ownFirst: false)).ToList();
                var vs = terms.Select((t, i) => Flatten(fused, t.Node.Inputs[1 - t.U], t.OutV, t.Contracted, $"fused.{id}.{i}", ownFirst: true)).ToList();
                var k = Dim($"fused.{id}", us.Sum(p => p.Flat.Size));
                var along = new DimsAttr([.. us.Select(p => p.Flat.Name)]);
                var ucat = Apply(fused, "concat", [.. us.Select(p => p.Value)], $"fused{id}.a", ("along", along), ("as", new DimsAttr([k.Name])));
                var vcat = Apply(fused, "concat", [.. vs.Select(p => p.Value)], $"fused{id}.b", ("along", along), ("as", new DimsAttr([k.Name])));
                var output = hit.A.Node.Attr<DimsAttr>("output");
                var sum = _b.Apply(fused, OpTable.Get("einsum"), [ucat, vcat], GraphBuilder.Attrs(
                    ("operands", new DimListsAttr([[.. hit.A.OutU, k.Name], [k.Name, .. hit.A.OutV]])), ("output", output)),
                    [hit.Add.Outputs[0].Name], hit.Add.Loc)[0];
                var rename = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance) { [hit.Add.Outputs[0]] = sum };
                var members = new HashSet<Node> { hit.A.Node, hit.B.Node, hit.Add };
                SumGroups++;
                SumEinsums += 2;
                nodes = Replace(nodes, members, nodes.IndexOf(hit.Add), fused, rename);
            }
        }

        /// <summary>
        /// <c>concat(.., reshape(concat(p...)), ..)</c>, where the reshape only renames the joined dim and both results are
        /// read once, becomes <c>concat(.., p..., ..)</c>. <see cref="FuseSums"/> fuses a sum of n einsums pairwise (the
        /// backward's five input-gradient terms of q, k, v, gate and up), which otherwise copies the growing operands
        /// n - 1 times: on palm-cpu, four concatenations of up to 56 MB per layer where one suffices.
        /// </summary>
        private static List<Node> FlattenConcats(List<Node> nodes, Block block)
        {
            while (true)
            {
                var uses = BlockFacts.Uses(nodes, block.Results);
                var producer = BlockFacts.Producers(nodes);
                Node? Once(Value v, string op) =>
                    uses.GetValueOrDefault(v) == 1 && producer.TryGetValue(v, out var p) && p.Op.Name == op ? p : null;
                (Node Old, Node New, Node[] Dead)? hit = null;
                foreach (var n in nodes.Where(n => n.Op.Name == "concat"))
                {
                    var along = n.Attr<DimsAttr>("along").Names;
                    var axis = n.Inputs[0].Type.IndexOf(along[0]);
                    var inputs = new List<Value>();
                    var names = new List<string>();
                    var dead = new List<Node>();
                    for (int i = 0; i < n.Inputs.Length; i++)
                    {
                        if (Once(n.Inputs[i], "reshape") is { } r && Once(r.Inputs[0], "concat") is { } inner
                            && RenamesDim(r.Inputs[0].Type, n.Inputs[i].Type, axis)
                            && inner.Inputs[0].Type.IndexOf(inner.Attr<DimsAttr>("along").Names[0]) == axis)
                        {
                            inputs.AddRange(inner.Inputs);
                            names.AddRange(inner.Attr<DimsAttr>("along").Names);
                            dead.Add(r);
                            dead.Add(inner);
                        }
                        else
                        {
                            inputs.Add(n.Inputs[i]);
                            names.Add(along[i]);
                        }
                    }
                    if (dead.Count == 0) continue;
                    hit = (n, new Node(n.Op, [.. inputs], n.Outputs, n.Attrs.SetItem("along", new DimsAttr([.. names])), [], n.Loc), [.. dead]);
                    break;
                }
                if (hit is not { } h) return nodes;
                nodes = [.. nodes.Where(m => !h.Dead.Contains(m)).Select(m => m == h.Old ? h.New : m)];
            }
        }

        /// <summary>
        /// Where a fused piece comes from, as a sort key: the block result its product becomes through layout views (a
        /// weight's gradient), or the block argument its operand is such a view of (a weight). Fused groups whose
        /// members all have one order their pieces by it, so every group over the same weights joins them in the same order
        /// whatever order autodiff emitted the members in: the backward's input-gradient join of the transposed weights
        /// is then the forward's join transposed, and its weight-gradient product lays the gradients out as the forward
        /// joins the weights. Code generation keeps each such group's weights side by side in one buffer
        /// (<c>ParameterGroups</c>), where those joins are views instead of copies.
        /// </summary>
        private sealed class Origins(List<Node> nodes, Block block)
        {
            private readonly Dictionary<Value, Node> _producer = BlockFacts.Producers(nodes);
            private readonly Dictionary<Value, int> _uses = BlockFacts.Uses(nodes, block.Results);
            private readonly Dictionary<Value, Node> _reader = ReadersOnce(nodes);

            // Layout views, and the collectives that gather or scatter a weight or its gradient per layer on a mesh.
            private static bool IsLayout(Node n) => n.Inputs.Length == 1 && n.Outputs.Length == 1 && n.Regions.IsEmpty
                && (n.Op.Name is "reshape" or "transpose" || n.Op.Sharding(n) == ShardingRule.Collective);

            private static Dictionary<Value, Node> ReadersOnce(List<Node> nodes)
            {
                var r = new Dictionary<Value, Node>(ReferenceEqualityComparer.Instance);
                foreach (var n in nodes) foreach (var v in n.Inputs) r[v] = n;
                return r;
            }

            /// <summary>The index of the block argument <paramref name="operand"/> is a layout view (or gather) of, or -1.</summary>
            public int Arg(Value operand)
            {
                var v = operand;
                while (_producer.TryGetValue(v, out var p) && IsLayout(p)) v = p.Inputs[0];
                return block.Args.IndexOf(v);
            }

            /// <summary>The index of the block result <paramref name="product"/> becomes through layout views (or a
            /// scatter), read by nothing else on the way, or -1.</summary>
            public int Result(Value product)
            {
                var w = product;
                while (_uses.GetValueOrDefault(w) == 1 && _reader.TryGetValue(w, out var r) && IsLayout(r)) w = r.Outputs[0];
                return block.Results.IndexOf(w);
            }
        }

        /// <summary>
        /// A sum of products fused by <see cref="FuseSums"/> joins its pieces in the order the sum was written (the
        /// backward's input gradient: up, gate, v, k, q, the reverse of the forward's weights). Both joins of such a
        /// product are reordered together by <see cref="Origins"/> of the weight-side pieces: a contraction does not
        /// depend on the order of its contracted entries.
        /// </summary>
        private static List<Node> OrderSumPieces(List<Node> nodes, Block block)
        {
            var producer = BlockFacts.Producers(nodes);
            var uses = BlockFacts.Uses(nodes, block.Results);
            var origin = new Origins(nodes, block);
            var replace = new Dictionary<Node, Node>(ReferenceEqualityComparer.Instance);
            foreach (var n in nodes.Where(n => n.Op.Name == "einsum" && n.Inputs.Length == 2))
            {
                if (!producer.TryGetValue(n.Inputs[0], out var a) || !producer.TryGetValue(n.Inputs[1], out var b)) continue;
                if (a.Op.Name != "concat" || b.Op.Name != "concat" || a == b || uses.GetValueOrDefault(n.Inputs[0]) != 1 || uses.GetValueOrDefault(n.Inputs[1]) != 1) continue;
                var along = a.Attr<DimsAttr>("along").Names;
                if (!along.SequenceEqual(b.Attr<DimsAttr>("along").Names) || replace.ContainsKey(a) || replace.ContainsKey(b)) continue;
                var keys = b.Inputs.Select(origin.Arg).ToArray();
                if (keys.Any(k => k < 0)) keys = [.. a.Inputs.Select(origin.Arg)];
                if (keys.Any(k => k < 0)) continue;
                var order = Enumerable.Range(0, along.Length).OrderBy(i => keys[i]).ToArray();
                if (order.SequenceEqual(Enumerable.Range(0, along.Length))) continue;
                Node Permuted(Node c) => new(c.Op, [.. order.Select(i => c.Inputs[i])], c.Outputs,
                    c.Attrs.SetItem("along", new DimsAttr([.. order.Select(i => along[i])])), [], c.Loc);
                replace[a] = Permuted(a);
                replace[b] = Permuted(b);
            }
            return replace.Count == 0 ? nodes : [.. nodes.Select(m => replace.GetValueOrDefault(m, m))];
        }

        /// <summary>
        /// A concatenation of the same data along the same axis as an earlier one becomes a view of it (a reshape
        /// renaming the joined dims). In the backward pass the weight gradients' fused matmul and the input gradient's
        /// join the same five activation gradients in the same order (15 ms a step on palm-cpu). Each group flattens
        /// its operands under dims of its own, so the joined values are different reshapes of the same tensors:
        /// operands are compared through such reshapes (same source, same sizes).
        /// </summary>
        private static List<Node> DedupeConcats(List<Node> nodes)
        {
            var producer = BlockFacts.Producers(nodes);
            object Data(Value v) => producer.TryGetValue(v, out var p) && p.Op.Name == "reshape"
                ? (p.Inputs[0], string.Join(",", v.Type.Dims.Select(d => d.Size)))
                : v;
            bool SameData(ImmutableArray<Value> a, ImmutableArray<Value> b) =>
                a.Length == b.Length && a.Zip(b).All(p => Data(p.First).Equals(Data(p.Second)));
            var seen = new List<Node>();
            var result = new List<Node>(nodes.Count);
            foreach (var n in nodes)
            {
                if (n.Op.Name == "concat")
                {
                    var axis = n.Inputs[0].Type.IndexOf(n.Attr<DimsAttr>("along").Names[0]);
                    var same = seen.FirstOrDefault(m => SameData(m.Inputs, n.Inputs)
                        && m.Inputs[0].Type.IndexOf(m.Attr<DimsAttr>("along").Names[0]) == axis);
                    if (same is not null)
                    {
                        result.Add(new Node(OpTable.Get("reshape"), [same.Outputs[0]], n.Outputs,
                            GraphBuilder.Attrs(("to", new DimsAttr([.. n.Outputs[0].Type.Dims.Select(d => d.Name)]))), [], n.Loc));
                        continue;
                    }
                    seen.Add(n);
                }
                result.Add(n);
            }
            return result;
        }

        /// <summary>Whether <paramref name="to"/> is <paramref name="from"/> with only the dim at <paramref name="axis"/> renamed.</summary>
        private static bool RenamesDim(TensorType from, TensorType to, int axis) =>
            axis >= 0 && from.Rank == to.Rank && from.DType == to.DType
            && Enumerable.Range(0, from.Rank).All(k => k == axis ? from.Dims[k].Size == to.Dims[k].Size : from.Dims[k] == to.Dims[k]);

        // ---- helpers --------------------------------------------------------------------------------------------

        /// <summary>
        /// <paramref name="v"/> transposed to [keep..., flat...] (or [flat..., keep...] when <paramref name="ownFirst"/>)
        /// and reshaped so the <paramref name="flat"/> dims become one new dim.
        /// </summary>
        private (Value Value, Dim Flat) Flatten(List<Node> into, Value v, ImmutableArray<string> keep, ImmutableArray<string> flat, string name, bool ownFirst)
        {
            var t = v.Type;
            var size = flat.Aggregate(1L, (a, d) => a * t.Dims[t.IndexOf(d)].Size);
            var dim = Dim(name, size);
            ImmutableArray<string> order = ownFirst ? [.. flat, .. keep] : [.. keep, .. flat];
            var arranged = order.SequenceEqual(t.Dims.Select(d => d.Name)) ? v : Apply(into, "transpose", [v], v.Name + ".t", ("to", new DimsAttr(order)));
            ImmutableArray<string> to = ownFirst ? [dim.Name, .. keep] : [.. keep, dim.Name];
            return (Apply(into, "reshape", [arranged], v.Name + ".flat", ("to", new DimsAttr(to))), dim);
        }

        private Value Arrange(List<Node> into, Value v, Value like) =>
            v.Type.Dims.SequenceEqual(like.Type.Dims) ? v
                : Apply(into, "transpose", [v], like.Name + ".t", ("to", new DimsAttr([.. like.Type.Dims.Select(d => d.Name)])));

        private Dim Dim(string name, long size)
        {
            if (_dims.TryGetValue(name, out var had)) return had.Size == size ? had : throw new InvalidOperationException($"fusion: dim {name} reused with another size");
            var d = new Dim(name, size);
            _dims[name] = d;
            NewDims.Add(d);
            return d;
        }

        private Value Apply(List<Node> into, string op, Value[] inputs, string hint, params (string, Attr)[] attrs) =>
            _b.Apply(into, OpTable.Get(op), inputs, GraphBuilder.Attrs(attrs), [hint])[0];

        private static bool LabelsAreNames(Node n) =>
            n.Attr<DimListsAttr>("operands").Lists.Select((l, i) => l.SequenceEqual(n.Inputs[i].Type.Dims.Select(d => d.Name))).All(x => x);

        /// <summary>Drops <paramref name="members"/>, inserts <paramref name="fused"/> at <paramref name="at"/>, and
        /// renames uses of replaced results (nested regions never see them: blocks are isolated).</summary>
        private List<Node> Replace(List<Node> nodes, HashSet<Node> members, int at, List<Node> fused, Dictionary<Value, Value> rename)
        {
            foreach (var (from, to) in rename) _renamed[from] = to;
            var result = new List<Node>();
            for (int i = 0; i < nodes.Count; i++)
            {
                if (i == at) result.AddRange(fused);
                if (!members.Contains(nodes[i])) result.Add(nodes[i]);
            }
            return result.Select(n => Remap(n, v => rename.TryGetValue(v, out var r) ? r : v)).ToList();
        }

        /// <summary>
        /// Orders nodes so each comes after what it reads: a fused group placed at its first member may read values
        /// defined later (another weight's all-gather); those are pulled forward, everything else keeps its order.
        /// </summary>
        private static List<Node> Schedule(List<Node> nodes, Block block)
        {
            var producer = BlockFacts.Producers(nodes);
            var done = new HashSet<Node>();
            var order = new List<Node>();
            void Visit(Node n)
            {
                if (!done.Add(n)) return;
                foreach (var v in n.Inputs)
                    if (producer.TryGetValue(v, out var p)) Visit(p);
                order.Add(n);
            }
            foreach (var n in nodes) Visit(n);
            return order;
        }

        /// <summary>Every value computed (transitively) from the results of <paramref name="from"/>.</summary>
        private static HashSet<Value> Downstream(List<Node> nodes, IEnumerable<Node> from)
        {
            var reached = new HashSet<Value>(from.SelectMany(n => n.Outputs), ReferenceEqualityComparer.Instance);
            foreach (var n in nodes)
                if (n.Inputs.Any(reached.Contains))
                    foreach (var o in n.Outputs) reached.Add(o);
            return reached;
        }
    }

    private static Node Remap(Node n, Func<Value, Value> r) =>
        n.Inputs.All(v => r(v) == v) ? n : new Node(n.Op, [.. n.Inputs.Select(r)], n.Outputs, n.Attrs, n.Regions, n.Loc);
}
