using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Passes;

/// <summary>
/// <c>--remat auto</c>: chooses a policy per layer so the step fits a per-device memory budget while recomputing as
/// few FLOPs as possible. Activation memory and recomputation are both linear in the number of layers given each
/// policy, so the best plan keeps the first k layers under a cheaper-to-run policy and the rest under a leaner one:
/// every pair of policies (A keeps more than B) and every k is scored from the measured per-layer figures of the uniform
/// plans, the cheapest fitting one is compiled (the loop split into two loops over layer groups) and its memory checked
/// against the budget by measurement, stepping k down if the estimate was optimistic.
/// </summary>
public static class AutoRemat
{
    /// <summary>The first <see cref="FirstGroup"/> layers use <see cref="First"/>, the rest <see cref="Second"/>.</summary>
    public sealed record Choice(int FirstGroup, RematPolicy First, RematPolicy Second, long Layers)
    {
        public override string ToString() => FirstGroup == 0 ? $"auto: {Second.Name} for all {Layers} layers"
            : FirstGroup == Layers ? $"auto: {First.Name} for all {Layers} layers"
            : $"auto: {First.Name} for layers 0-{FirstGroup - 1}, {Second.Name} for layers {FirstGroup}-{Layers - 1}";
    }

    public sealed record Result(CompiledTraining Compiled, Choice Choice, TrainingMemory Memory, IReadOnlyList<(string Policy, TrainingMemory Memory)> Uniform);

    /// <summary>Searches and compiles; throws <see cref="InvalidOperationException"/> when even the leanest policy does not fit.</summary>
    public static Result Compile(Graph forward, Mesh? mesh, TrainingConfig config, long budget)
    {
        var loops = forward.Body.Nodes.Where(n => n.Op.HasRegion).ToList();
        if (loops.Count != 1) throw new InvalidOperationException($"--remat auto needs a graph with exactly one layer loop, {forward.Name} has {loops.Count}");
        var layers = ControlOps.Count(loops[0], forward.DimsByName);
        var uniform = new List<(RematPolicy Policy, CompiledTraining Compiled, TrainingMemory Memory)>();
        foreach (var p in RematPolicy.Fixed)
        {
            var c = TrainingCompiler.Compile(forward, mesh, config with { Remat = p, Auto = null });
            uniform.Add((p, c, TrainingMemory.Of(c)));
        }
        var report = uniform.Select(u => (u.Policy.Name, u.Memory)).ToList();
        var leanest = uniform.MinBy(u => u.Memory.Total);
        if (leanest.Memory.Total > budget)
            throw new InvalidOperationException(
                $"does not fit: even --remat {leanest.Policy.Name} needs {leanest.Memory.Total:N0} bytes per device " +
                $"(activations {leanest.Memory.Activations:N0}), over the budget of {budget:N0}");

        // Candidates (A, B, k): memory and recompute interpolate linearly between the uniform plans.
        var candidates = new List<(double Recompute, long Memory, Choice Choice)>();
        foreach (var a in uniform)
            foreach (var b in uniform)
            {
                if (a.Memory.Total <= b.Memory.Total && a.Policy != b.Policy) continue;
                for (int k = 0; k <= layers; k++)
                {
                    if (a.Policy == b.Policy && k != layers) continue;
                    double f = (double)k / layers;
                    var mem = (long)(b.Memory.Total + f * (a.Memory.Total - b.Memory.Total));
                    var rec = b.Memory.RecomputedFlopsPerStep + f * (a.Memory.RecomputedFlopsPerStep - b.Memory.RecomputedFlopsPerStep);
                    if (mem <= budget) candidates.Add((rec, mem, new Choice(k, a.Policy, b.Policy, layers)));
                }
            }
        foreach (var (_, _, choice) in candidates.OrderBy(c => c.Recompute).ThenBy(c => c.Memory))
        {
            var compiled = choice.FirstGroup == 0 || choice.FirstGroup == layers
                ? uniform.First(u => u.Policy == (choice.FirstGroup == 0 ? choice.Second : choice.First)).Compiled
                : TrainingCompiler.Compile(forward, mesh, config with { Auto = choice });
            var memory = TrainingMemory.Of(compiled);
            if (memory.Total <= budget) return new Result(compiled, choice, memory, report);
        }
        var fallback = leanest;
        return new Result(fallback.Compiled, new Choice(0, fallback.Policy, fallback.Policy, layers), fallback.Memory, report);
    }

    /// <summary>
    /// The forward graph with its layer loop split in two: layers [0, k) and [k, n), each a loop over its own dim
    /// (<c>layers[0:k]</c>, <c>layers[k:n]</c>) reading its slices of the stacked parameters, the second carrying on
    /// from the first. The second loop's body is a copy with fresh values.
    /// </summary>
    public static Graph SplitLayers(Graph g, int k)
    {
        var loop = g.Body.Nodes.Single(n => n.Op.HasRegion);
        var countDim = g.DimsByName[loop.Attr<DimsAttr>("count").Names[0]];
        if (k <= 0 || k >= countDim.Size) return g;
        if (loop.Outputs.Length != (int)loop.Attr<IntAttr>("carried").Value)
            throw new InvalidOperationException("--remat auto cannot split a loop with stacked results");
        var first = new Dim($"{countDim.Name}[0:{k}]", k);
        var second = new Dim($"{countDim.Name}[{k}:{countDim.Size}]", countDim.Size - k);
        var dims = g.DimsByName.ToDictionary(kv => kv.Key, kv => kv.Value);
        dims[first.Name] = first;
        dims[second.Name] = second;
        var b = GraphBuilder.Continuing(g, dims);
        var carried = (int)loop.Attr<IntAttr>("carried").Value;
        var stacked = (int)loop.Attr<IntAttr>("stacked").Value;
        var nodes = new List<Node>();
        foreach (var n in g.Body.Nodes)
        {
            if (n != loop) { nodes.Add(n); continue; }
            var parts = Enumerable.Range(carried, stacked).Select(i => b.Apply(nodes, OpTable.Get("split"), [n.Inputs[i]],
                GraphBuilder.Attrs(("along", new DimsAttr([countDim.Name])), ("into", new DimsAttr([first.Name, second.Name]))),
                [n.Inputs[i].Name + ".a", n.Inputs[i].Name + ".b"], n.Loc)).ToList();
            ImmutableArray<Value> Operands(ImmutableArray<Value> carriedIn, int half) =>
                [.. carriedIn, .. parts.Select(p => p[half]), .. n.Inputs.Skip(carried + stacked)];
            var attrs1 = n.Attrs.SetItem("count", new DimsAttr([first.Name]));
            var attrs2 = n.Attrs.SetItem("count", new DimsAttr([second.Name]));
            var out1 = b.Apply(nodes, n.Op, Operands([.. n.Inputs.Take(carried)], 0), attrs1, [.. n.Outputs.Select(o => o.Name + ".a")], n.Loc, [n.Regions[0]]);
            var copy = Clone(n.Regions[0], b);
            var body2 = b.Apply(nodes, n.Op, Operands(out1, 1), attrs2, [.. n.Outputs.Select(o => o.Name + ".b")], n.Loc, [copy]);
            // Later nodes read the second loop's results under the original values: re-point them.
            var map = n.Outputs.Select((o, i) => (o, body2[i])).ToDictionary(p => p.o, p => p.Item2);
            var rest = g.Body.Nodes.SkipWhile(x => x != loop).Skip(1)
                .Select(x => new Node(x.Op, [.. x.Inputs.Select(v => map.GetValueOrDefault(v, v))], x.Outputs, x.Attrs, x.Regions, x.Loc)).ToList();
            nodes.AddRange(rest);
            var result = new Graph(g.Name, [.. g.Dims, first, second], g.Mesh, g.Args,
                new Block(g.Body.Args, [.. nodes], [.. g.Body.Results.Select(v => map.GetValueOrDefault(v, v))]), g.OutputNames);
            Verifier.Verify(result);
            return result;
        }
        throw new InvalidOperationException("unreachable");
    }

    /// <summary>A copy of a block with fresh values (same ops, attributes and locations).</summary>
    private static Block Clone(Block block, GraphBuilder b)
    {
        var map = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
        foreach (var a in block.Args) map[a] = b.NewValue(a.Name, a.Type, a.Sharding, a.Loc);
        var nodes = new List<Node>();
        foreach (var n in block.Nodes)
        {
            if (!n.Regions.IsEmpty) throw new InvalidOperationException("--remat auto cannot split a loop with nested loops");
            var outs = n.Outputs.Select(o => b.NewValue(o.Name, o.Type, o.Sharding, o.Loc)).ToImmutableArray();
            nodes.Add(new Node(n.Op, [.. n.Inputs.Select(v => map[v])], outs, n.Attrs, [], n.Loc));
            for (int i = 0; i < outs.Length; i++) map[n.Outputs[i]] = outs[i];
        }
        return new Block([.. block.Args.Select(a => map[a])], [.. nodes], [.. block.Results.Select(v => map[v])]);
    }
}
