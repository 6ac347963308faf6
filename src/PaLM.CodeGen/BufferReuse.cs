using PaLM.IR;

namespace PaLM.CodeGen;

/// <summary>
/// Buffer donation, the in-place half of XLA's buffer assignment: an elementwise op whose operand is a temporary that
/// nothing reads afterwards computes into that operand's buffer (<c>a.add_(b)</c>) instead of allocating a new one.
/// On CPU every avoided allocation of a large tensor is also an avoided round of page faults when the allocator hands
/// out fresh memory, and the step's high-water mark drops (docs/performance.md has the figures).
/// <para>
/// An operand is donated only when all of these hold, so the rewrite cannot change a result:
/// it is produced in the same block (not a block argument, not a value from around a loop, which later iterations read);
/// its producer returns a fresh buffer that aliases nothing (an op with an in-place form, or an einsum of two or more
/// operands); this op is its last use: every other reader is an earlier node of the same block whose own result is a
/// fresh buffer (so no view of it exists), and it is not a block result; it has exactly the result's shape and dtype
/// and is passed as is (not broadcast or re-laid-out by the lowering); and the op has an in-place form
/// (<see cref="OpDef.InPlace"/>), with the operands swapped for the second operand of a commutative op.
/// </para>
/// </summary>
public static class BufferReuse
{
    /// <summary>
    /// For each node that can run in place: which operand's buffer it takes. With <paramref name="donateUpdatedArguments"/>
    /// (JAX's <c>donate_argnums</c>, XLA's input/output aliasing), the parameters and optimizer state a training step
    /// replaces (<see cref="Graph.OutputUpdates"/>) count as buffers the step owns: the update that produces their
    /// successor may write into them, so the caller must not read or dispose the old tensor after the call unless it
    /// is not the same object as the new one.
    /// <para>
    /// With a <paramref name="fusion"/> plan, a fused node reads its operands where its loop runs (its group's last
    /// member), not where it stands, and fused nodes never compute in place themselves (<see cref="PlanLoops"/> says
    /// which operand buffers their loops write into).
    /// </para>
    /// </summary>
    public static IReadOnlyDictionary<Node, int> Plan(Graph g, bool donateUpdatedArguments = false, FusionPlan? fusion = null) =>
        PlanAll(g, fusion ?? FusionPlan.None, donateUpdatedArguments).Ops;

    /// <summary>
    /// For each fused loop: per result, the index of the operand whose buffer it is written into, or -1 for a new
    /// buffer. An operand qualifies under the same rules as for a single op, with the loop's members as its readers;
    /// and inside the loop's kernel every read of it must come before the statement that writes the result, since
    /// a chunk's result then overwrites elements the kernel has finished reading (the Adafactor update writes the new
    /// parameter and moments over the old ones this way, with <paramref name="donateUpdatedArguments"/>).
    /// </summary>
    public static IReadOnlyDictionary<FusionGroup, int[]> PlanLoops(Graph g, FusionPlan fusion, bool donateUpdatedArguments = false) =>
        PlanAll(g, fusion, donateUpdatedArguments).Loops;

    /// <summary><see cref="Plan"/> and <see cref="PlanLoops"/> from one walk over the graph (what code generation uses).</summary>
    public static (IReadOnlyDictionary<Node, int> Ops, IReadOnlyDictionary<FusionGroup, int[]> Loops) PlanAll(Graph g, FusionPlan fusion, bool donateUpdatedArguments)
    {
        var facts = new Facts(g, donateUpdatedArguments, fusion);
        var ops = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        var loops = new Dictionary<FusionGroup, int[]>();
        void Visit(Block b)
        {
            var producers = new Dictionary<Value, Node>(ReferenceEqualityComparer.Instance);
            for (int i = 0; i < b.Nodes.Length; i++)
            {
                var n = b.Nodes[i];
                foreach (var r in n.Regions) Visit(r);
                if (fusion.GroupOf(n) is { } group)
                {
                    if (ReferenceEquals(n, group.Last)) loops[group] = LoopDonors(group, b, producers, facts);
                }
                else if (n.Op.InPlace is not null && n.Outputs.Length == 1 && n.Op.Lower(new LowerContext(n)) is RtCall call)
                {
                    var candidates = n.Inputs.Length == 2 && n.Op.Commutative ? new[] { 0, 1 } : new[] { 0 };
                    foreach (var k in candidates)
                    {
                        if (Donatable(n, b, i, k, call, producers, facts))
                        {
                            ops[n] = k;
                            break;
                        }
                    }
                }
                foreach (var o in n.Outputs) producers[o] = n;
            }
        }
        Visit(g.Body);
        return (ops, loops);
    }

    private static int[] LoopDonors(FusionGroup group, Block b, Dictionary<Value, Node> producers, Facts facts)
    {
        var donors = Enumerable.Repeat(-1, group.Outputs.Count).ToArray();
        var members = new HashSet<Node>(group.Members, ReferenceEqualityComparer.Instance);
        var writer = group.Outputs.Select(o => group.Members.FindIndex(m => ReferenceEquals(m.Outputs[0], o))).ToArray();
        for (int k = 0; k < group.Inputs.Count; k++)
        {
            var v = group.Inputs[k];
            if (!BufferIsDead(v, b, group.EmitIndex, members, producers, facts)) continue;
            int lastRead = group.Members.FindLastIndex(m => m.Inputs.Contains(v));
            // A donated argument's buffer may hold only its own successor: the caller keeps or frees the old tensor by
            // whether the output that replaces it is the same object.
            var only = facts.Successor.GetValueOrDefault(v);
            int j = Enumerable.Range(0, donors.Length).FirstOrDefault(j => donors[j] < 0 && writer[j] > lastRead
                && (only is null || ReferenceEquals(group.Outputs[j], only)), -1);
            if (j >= 0) donors[j] = k;
        }
        return donors;
    }

    /// <summary>What every donation decision reads: the donated arguments and where every value is read.</summary>
    private sealed class Facts
    {
        public readonly FusionPlan Fusion;

        /// <summary>Each donated argument (a parameter or state the step replaces) and its successor: the result that replaces it.</summary>
        public readonly Dictionary<Value, Value> Successor = new(ReferenceEqualityComparer.Instance);

        /// <summary>Every use of every value: the node reading it (null for a block result), its block, and where it
        /// reads (a fused node at its loop's position).</summary>
        public readonly Dictionary<Value, List<(Node? User, Block Block, int Index)>> Uses = new(ReferenceEqualityComparer.Instance);

        public Facts(Graph g, bool donateUpdatedArguments, FusionPlan fusion)
        {
            Fusion = fusion;
            if (donateUpdatedArguments && !g.OutputUpdates.IsDefaultOrEmpty)
                for (int r = 0; r < g.OutputUpdates.Length; r++)
                    if (g.OutputUpdates[r] is var i and >= 0 && g.Args[i].Kind is ArgKind.Parameter or ArgKind.State)
                        Successor[g.Args[i].Value] = g.Body.Results[r];
            CountUses(g.Body);
        }

        private void Use(Value v, Node? user, Block b, int i)
        {
            if (!Uses.TryGetValue(v, out var list)) Uses[v] = list = [];
            list.Add((user, b, i));
        }

        private void CountUses(Block b)
        {
            for (int i = 0; i < b.Nodes.Length; i++)
            {
                var n = b.Nodes[i];
                var at = Fusion.GroupOf(n)?.EmitIndex ?? i;
                foreach (var v in n.Inputs) Use(v, n, b, at);
                foreach (var r in n.Regions) CountUses(r);
            }
            foreach (var v in b.Results) Use(v, null, b, b.Nodes.Length);
        }
    }

    /// <summary>Whether <paramref name="op"/>'s result is a new buffer that aliases none of its operands.</summary>
    internal static bool FreshResult(Node op) => op.Regions.Length == 0 && (op.Op.InPlace is not null || op.Op.FreshBuffer || op.Op.IsMatmul && op.Inputs.Length >= 2);

    private static bool Donatable(Node n, Block b, int at, int k, RtCall call, Dictionary<Value, Node> producers, Facts facts)
    {
        var v = n.Inputs[k];
        if (n.Inputs.Count(x => ReferenceEquals(x, v)) != 1) return false;
        if (!BufferIsDead(v, b, at, new HashSet<Node>([n], ReferenceEqualityComparer.Instance), producers, facts)) return false;
        var t = n.Outputs[0].Type;
        if (v.Type.DType != t.DType || !v.Type.Shape.SequenceEqual(t.Shape)) return false;
        return k < call.Args.Length && call.Args[k] is LInput { Index: var i } && i == k;
    }

    /// <summary>
    /// Whether <paramref name="v"/>'s buffer may be overwritten by <paramref name="readers"/> (one op, or a fused
    /// loop's members) running at position <paramref name="at"/> of <paramref name="b"/>: it is a fresh buffer of this
    /// block (or a donated argument) that nothing else reads at or after that position and of which no view survives.
    /// </summary>
    private static bool BufferIsDead(Value v, Block b, int at, HashSet<Node> readers, Dictionary<Value, Node> producers, Facts facts)
    {
        bool isDonatedArg = facts.Successor.ContainsKey(v);
        if (!isDonatedArg && (!producers.TryGetValue(v, out var producer) || !FreshResult(producer))) return false;
        // Every other reader ran earlier in this block and made no view of v (its result is a buffer of its own).
        // A donated argument is also read by the layer loops; a loop reading it as a stacked or invariant operand
        // views it only while it runs, and its results alias it only if the body hands it straight to a carried result.
        foreach (var (user, block, index) in facts.Uses[v])
        {
            if (user is not null && readers.Contains(user)) continue;
            if (user is null || !ReferenceEquals(block, b) || index >= at) return false;
            if (!FreshResult(user) && !(isDonatedArg && LoopDoesNotAlias(user, v))) return false;
        }
        return true;
    }

    private static bool LoopDoesNotAlias(Node loop, Value v)
    {
        if (!loop.Op.HasRegion) return false;
        var carried = (int)loop.Attr<IntAttr>("carried").Value;
        var body = loop.Regions[0];
        for (int i = 0; i < loop.Inputs.Length; i++)
        {
            if (!ReferenceEquals(loop.Inputs[i], v)) continue;
            if (i < carried || body.Results.Take(carried).Contains(body.Args[i], ReferenceEqualityComparer.Instance)) return false;
        }
        return true;
    }

    /// <summary>The in-place call for <paramref name="n"/>, taking operand <paramref name="k"/>'s buffer.</summary>
    public static RtCall InPlaceCall(Node n, RtCall call, int k)
    {
        var args = call.Args;
        if (k == 1) args = [args[1], args[0], .. args.Skip(2)];
        return new RtCall(n.Op.InPlace!, args);
    }
}
