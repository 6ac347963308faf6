using PaLM.IR;

namespace PaLM.CodeGen;

/// <summary>
/// Weights that a fused projection joins, kept side by side in one buffer (<c>Rt.GroupSideBySide</c> in the emitted
/// <c>ArrangeParameters</c>, which <c>InitParameters</c> and the trainer's restore call), so that the join is a view
/// (<c>Rt.Concat</c>) instead of a copy of every weight twice a step: palm-cpu's forward joins w_q, w_k, w_v, w_gate and w_up (21.6 MB a layer), its backward joins their
/// transposes in the same order (the fusion pass orders both the same way) and the forward's output projection joins
/// w_o and w_down. XLA's buffer assignment gives a concatenation's operands slices of its result the same way; here the
/// operands are parameters, which live across steps, so the layout is chosen once, when they are made.
/// <para>
/// A group is a concatenation (in any block) every operand of which is a parameter, or a layer loop's per-layer slice of
/// one, through reshapes that only merge the dims it joins: member k is [lead..., own dims..., trail...] with the same
/// lead and trail dims as the others, and the concatenation's dim stands for its own dims. A parameter joins one group
/// at most. The step keeps the layout when it updates parameters in place (donated arguments, which the emitter writes
/// as loop destinations so that strided views stay where they are); a step that returns new parameters only loses the
/// saving: a join of tensors that are not side by side copies them.
/// </para>
/// </summary>
public sealed class ParameterGroups
{
    /// <summary>Members (indices among the graph's persistent arguments) and how many leading and trailing dims they share.</summary>
    public sealed record Group(int[] Members, int Lead, int Trail);

    public IReadOnlyList<Group> Groups { get; }

    private ParameterGroups(IReadOnlyList<Group> groups) => Groups = groups;

    public static ParameterGroups Of(Graph g)
    {
        var persistent = g.Persistent.Select(a => a.Value).ToList();
        // Each value that is a parameter (not optimizer state) or a layer loop's slice of one: the parameter's index
        // among the persistent arguments and how many leading dims were sliced off.
        var origin = new Dictionary<Value, (int Param, int Sliced)>(ReferenceEqualityComparer.Instance);
        foreach (var (a, i) in g.Persistent.Select((a, i) => (a, i)))
            if (a.Kind == ArgKind.Parameter) origin[a.Value] = (i, 0);
        var groups = new List<Group>();
        Visit(g.Body, origin, persistent, groups, []);
        return new ParameterGroups(groups);
    }

    private static void Visit(Block block, Dictionary<Value, (int Param, int Sliced)> origin, List<Value> persistent, List<Group> groups, HashSet<int> taken)
    {
        var producers = new Dictionary<Value, Node>(ReferenceEqualityComparer.Instance);
        foreach (var n in block.Nodes)
        {
            foreach (var o in n.Outputs) producers[o] = n;
            if (n.Op.Name == "repeat" && n.Regions.Length == 1)
            {
                var region = n.Regions[0];
                var carried = (int)n.Attr<IntAttr>("carried").Value;
                var stacked = (int)n.Attr<IntAttr>("stacked").Value;
                for (int i = carried; i < region.Args.Length && i < n.Inputs.Length; i++)
                    if (origin.TryGetValue(n.Inputs[i], out var o))
                        origin[region.Args[i]] = i < carried + stacked ? (o.Param, o.Sliced + 1) : o;
            }
            foreach (var r in n.Regions) Visit(r, origin, persistent, groups, taken);
            if (n.Op.Name == "concat" && Candidate(n, producers, origin, persistent) is { } group && group.Members.All(m => !taken.Contains(m)))
            {
                foreach (var m in group.Members) taken.Add(m);
                groups.Add(group);
            }
        }
    }

    private static Group? Candidate(Node concat, Dictionary<Value, Node> producers, Dictionary<Value, (int Param, int Sliced)> origin, List<Value> persistent)
    {
        if (concat.Inputs.Length < 2) return null;
        var axis = concat.Inputs[0].Type.IndexOf(concat.Attr<DimsAttr>("along").Names[0]);
        if (axis < 0) return null;
        var members = new List<int>();
        int? sliced = null;
        long[]? lead = null, trail = null;
        foreach (var piece in concat.Inputs)
        {
            var v = piece;
            while (!origin.ContainsKey(v) && producers.TryGetValue(v, out var p) && p.Op.Name == "reshape") v = p.Inputs[0];
            if (!origin.TryGetValue(v, out var o) || members.Contains(o.Param)) return null;
            if (sliced is { } s && s != o.Sliced) return null;
            sliced = o.Sliced;
            // The parameter's shape, its sliced-off leading dims and the piece's dims before the joined one shared.
            var full = persistent[o.Param].Type.Shape.ToArray();
            var per = full[o.Sliced..];
            var shape = piece.Type.Shape.ToArray();
            var (before, after) = (shape[..axis], shape[(axis + 1)..]);
            if (per.Length < before.Length + after.Length || !per[..before.Length].SequenceEqual(before)
                || !per[^after.Length..].SequenceEqual(after)) return null;
            if (per[before.Length..^after.Length].Aggregate(1L, (a, b) => a * b) != shape[axis]) return null;
            var myLead = full[..(o.Sliced + before.Length)];
            if (lead is not null && (!lead.SequenceEqual(myLead) || !trail!.SequenceEqual(after))) return null;
            if (members.Count > 0 && persistent[o.Param].Type.DType != persistent[members[0]].Type.DType) return null;
            (lead, trail) = (myLead, after);
            members.Add(o.Param);
        }
        return new Group([.. members], lead!.Length, trail!.Length);
    }
}
