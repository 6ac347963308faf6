using PaLM.IR;

namespace PaLM.CodeGen;

/// <summary>
/// A chain of elementwise ops that code generation runs as one loop: <see cref="Members"/> in block order, emitted as a
/// single kernel call where the last member stands. The loop reads each of <see cref="Inputs"/> (full-size tensors of
/// <see cref="Type"/>) and <see cref="Scalars"/> (rank-0 values) once and writes only <see cref="Outputs"/> (members'
/// results that something outside the loop reads); every other intermediate lives in a cache-sized scratch chunk.
/// </summary>
public sealed class FusionGroup
{
    internal FusionGroup(int firstIndex) => FirstIndex = firstIndex;

    public int Id { get; internal set; }
    public List<Node> Members { get; } = [];
    public List<Value> Inputs { get; } = [];
    public List<Value> Scalars { get; } = [];

    /// <summary>Inputs over a leading part of <see cref="Type"/>'s dims (a per-layer factor of a stacked weight's
    /// update, say): read once per chunk as the value at the chunk's index in those dims.</summary>
    public List<Value> Leads { get; } = [];
    public List<Value> Outputs { get; } = [];

    /// <summary>Rank-0 inputs that are literal constants in the same block: emitted into the kernel as numbers.</summary>
    public Dictionary<Value, double> Constants { get; } = new(ReferenceEqualityComparer.Instance);

    public TensorType Type => Members[0].Outputs[0].Type;

    /// <summary>The member the loop is emitted in place of.</summary>
    public Node Last => Members[^1];

    /// <summary>Index of <see cref="Last"/> in its block: where the loop runs, for buffer donation's ordering.</summary>
    public int EmitIndex { get; internal set; }

    internal int FirstIndex { get; }
    internal bool Open { get; set; } = true;
}

/// <summary>The fusion groups of a graph and each fused node's group.</summary>
public sealed class FusionPlan
{
    public static FusionPlan None { get; } = new([]);

    private readonly Dictionary<Node, FusionGroup> _groupOf = new(ReferenceEqualityComparer.Instance);

    internal FusionPlan(IReadOnlyList<FusionGroup> groups)
    {
        Groups = groups;
        foreach (var g in groups) foreach (var n in g.Members) _groupOf[n] = g;
    }

    public IReadOnlyList<FusionGroup> Groups { get; }

    public FusionGroup? GroupOf(Node n) => _groupOf.GetValueOrDefault(n);
}

/// <summary>
/// Loop fusion, XLA's loop fusion and TorchInductor's pointwise fusion for this runtime: maximal chains of elementwise
/// ops (those with an <see cref="OpDef.LoopPrimitive"/>) over fp32 operands of one shape, plus rank-0 scalars, become
/// one generated kernel (<c>PaLM.Runtime.FusedLoop</c>) that streams over memory once instead of once per op. An operand
/// may also range over a leading part of the loop's dims (<see cref="LeadOf"/>; XLA fuses such broadcasts too): the
/// Adafactor update divides and scales each stacked weight by per-layer factors. On CPU
/// such chains are bound by memory bandwidth, and every unfused op also allocates (and on fresh memory page-faults)
/// a full-size result: the optimizer's Adafactor update is a chain of about 17 of them per parameter.
/// <para>
/// A group is decided in one pass over each block, in order. An elementwise node joins (and merges) the still-open
/// groups that produce its same-shaped operands; failing that, it joins a still-open group of its shape that reads one
/// of its operands (a sibling, so the loop reads the shared operand once and has several results); else it starts one. A group closes when anything outside it reads one of
/// its values, so everything that reads a group's result runs after the group's loop, which is emitted where its
/// last member stood; the loop's operands were all computed before that point. Buffer donation
/// (<see cref="BufferReuse"/>) sees each member's reads at the loop's position, so nothing between a group's first and
/// last member overwrites what the loop will read. Groups of one op stay as they were (libtorch's kernel is as good).
/// Fusion changes no value's semantics; results agree with the unfused program to float rounding (transcendental
/// functions come from a different vector library).
/// </para>
/// </summary>
public static class LoopFusion
{
    /// <summary>Whether <paramref name="n"/> can be a member of a fused loop.</summary>
    public static bool Fusible(Node n)
    {
        if (n.Op.LoopPrimitive is null || n.Outputs.Length != 1 || n.Regions.Length > 0) return false;
        var t = n.Outputs[0].Type;
        if (t.DType != DType.F32 || t.Rank == 0) return false;
        bool full = false;
        foreach (var v in n.Inputs)
        {
            if (v.Type.DType != DType.F32) return false;
            if (v.Type.Rank == 0 || LeadOf(v.Type, t)) continue;
            if (!v.Type.Equals(t)) return false;      // another broadcast or a re-laid-out operand: not a plain elementwise read
            full = true;
        }
        return full;
    }

    /// <summary>Whether <paramref name="operand"/> is <paramref name="loop"/>'s first few dims (names and sizes), at least
    /// one and not all: broadcast over the rest, so one value of it holds for a whole run of the loop's elements.</summary>
    public static bool LeadOf(TensorType operand, TensorType loop) =>
        operand.Rank > 0 && operand.Rank < loop.Rank && operand.Dims.SequenceEqual(loop.Dims.Take(operand.Rank));

    public static FusionPlan Plan(Graph g)
    {
        var groups = new List<FusionGroup>();
        PlanBlock(g.Body, groups);
        for (int i = 0; i < groups.Count; i++) groups[i].Id = i;
        return new FusionPlan(groups);
    }

    private static void PlanBlock(Block block, List<FusionGroup> result)
    {
        var groupOf = new Dictionary<Value, FusionGroup>(ReferenceEqualityComparer.Instance);
        var index = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        var all = new List<FusionGroup>();
        // The groups reading each full-size value, for sibling fusion.
        var readers = new Dictionary<Value, List<FusionGroup>>(ReferenceEqualityComparer.Instance);
        void Reads(Node member, FusionGroup group)
        {
            foreach (var v in member.Inputs.Where(v => v.Type.Equals(member.Outputs[0].Type)))
            {
                if (!readers.TryGetValue(v, out var list)) readers[v] = list = [];
                if (!list.Contains(group)) list.Add(group);
            }
        }
        for (int i = 0; i < block.Nodes.Length; i++)
        {
            var n = block.Nodes[i];
            index[n] = i;
            foreach (var r in n.Regions) PlanBlock(r, result);
            if (Fusible(n))
            {
                var joined = n.Inputs.Where(v => v.Type.Equals(n.Outputs[0].Type) && groupOf.TryGetValue(v, out var g) && g.Open)
                    .Select(v => groupOf[v]).Distinct().OrderBy(g => g.FirstIndex).ToList();
                // Else a sibling: an open group of the same shape that reads one of n's operands, so the loop reads it
                // once for both (XLA's sibling multi-output fusion; SwiGLU's two backward halves read one cotangent).
                if (joined.Count == 0 && n.Inputs.Where(v => v.Type.Equals(n.Outputs[0].Type)).SelectMany(v => readers.GetValueOrDefault(v) ?? [])
                        .Where(g => g.Open && g.Type.Equals(n.Outputs[0].Type)).OrderBy(g => g.FirstIndex).FirstOrDefault() is { } sibling)
                    joined.Add(sibling);
                var group = joined.Count > 0 ? joined[0] : new FusionGroup(i);
                if (joined.Count == 0) all.Add(group);
                foreach (var other in joined.Skip(1))
                {
                    group.Members.AddRange(other.Members);
                    foreach (var m in other.Members)
                    {
                        groupOf[m.Outputs[0]] = group;
                        Reads(m, group);
                    }
                    all.Remove(other);
                    other.Open = false;   // merged away: no later node may join it
                }
                group.Members.Add(n);
                group.Members.Sort((a, b) => index[a].CompareTo(index[b]));
                groupOf[n.Outputs[0]] = group;
                Reads(n, group);
                // A lead operand made by another open group (a per-layer factor's own loop) is read by this one: that
                // group's loop must run before, so nothing may join it later and move it past this node.
                foreach (var v in n.Inputs)
                    if (!v.Type.Equals(n.Outputs[0].Type) && groupOf.TryGetValue(v, out var made) && !ReferenceEquals(made, group)) made.Open = false;
            }
            else
            {
                foreach (var v in n.Inputs)
                    if (groupOf.TryGetValue(v, out var g)) g.Open = false;
            }
        }

        var producers = new Dictionary<Value, Node>(ReferenceEqualityComparer.Instance);
        foreach (var n in block.Nodes) foreach (var o in n.Outputs) producers[o] = n;
        foreach (var group in all.Where(g => g.Members.Count > 1))
        {
            var members = new HashSet<Node>(group.Members, ReferenceEqualityComparer.Instance);
            var produced = new HashSet<Value>(group.Members.Select(m => m.Outputs[0]), ReferenceEqualityComparer.Instance);
            foreach (var m in group.Members)
                foreach (var v in m.Inputs)
                {
                    if (produced.Contains(v)) continue;
                    if (LeadOf(v.Type, group.Type)) { if (!group.Leads.Contains(v)) group.Leads.Add(v); }
                    else if (v.Type.Rank > 0) { if (!group.Inputs.Contains(v)) group.Inputs.Add(v); }
                    else if (producers.TryGetValue(v, out var p) && p.Op.Name == "constant") group.Constants[v] = p.Attr<FloatAttr>("value").Value;
                    else if (!group.Scalars.Contains(v)) group.Scalars.Add(v);
                }
            var readOutside = block.Nodes.Where(n => !members.Contains(n)).SelectMany(n => n.Inputs).Concat(block.Results)
                .Where(produced.Contains).ToHashSet(ReferenceEqualityComparer.Instance);
            group.Outputs.AddRange(group.Members.Select(m => m.Outputs[0]).Where(readOutside.Contains));
            group.EmitIndex = index[group.Last];
            result.Add(group);
        }
    }
}
