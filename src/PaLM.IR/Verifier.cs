using System.Collections.Immutable;
using System.Text;

namespace PaLM.IR;

/// <summary>A malformed graph. The message shows the offending node with its neighbours.</summary>
public sealed class VerifyException(string message) : Exception(message);

/// <summary>
/// Checks a graph's invariants, re-inferring every type from the op table: SSA (each value defined once, used after
/// its definition, regions isolated), types as the op rules say, declared dims, sharding annotations valid on the mesh.
/// Run after parsing and after every pass.
/// </summary>
public static class Verifier
{
    public static void Verify(Graph g)
    {
        foreach (var d in g.Dims)
            if (d.Size <= 0) throw new VerifyException($"dim '{d.Name}' has non-positive size {d.Size}");
        if (g.Mesh is { } mesh)
            foreach (var a in mesh.Axes)
                if (a.Size <= 0) throw new VerifyException($"mesh axis '{a.Name}' has non-positive size {a.Size}");
        if (!g.Args.Select(a => a.Value).SequenceEqual(g.Body.Args))
            throw new VerifyException("the body's arguments are not the graph's parameters and inputs");
        if (g.OutputNames.Length != g.Body.Results.Length)
            throw new VerifyException($"{g.OutputNames.Length} output names for {g.Body.Results.Length} results");
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var a in g.Args)
            if (a.Kind != ArgKind.Input && a.Init is null)
                throw new VerifyException($"{(a.Kind == ArgKind.State ? "optimizer state" : "parameter")} {a.Value} has no initializer");
        if (!g.OutputUpdates.IsDefaultOrEmpty)
        {
            if (g.OutputUpdates.Length != g.OutputNames.Length)
                throw new VerifyException($"{g.OutputUpdates.Length} output updates for {g.OutputNames.Length} outputs");
            for (int i = 0; i < g.OutputUpdates.Length; i++)
            {
                var k = g.OutputUpdates[i];
                if (k == -1) continue;
                if (k < 0 || k >= g.Args.Length || g.Args[k].Kind == ArgKind.Input)
                    throw new VerifyException($"output '{g.OutputNames[i]}' updates argument #{k}, which is not a parameter or state");
                if (g.Args[k].Value.Type.DType != g.Body.Results[i].Type.DType || g.Args[k].Value.Type.Shape.Length != g.Body.Results[i].Type.Rank)
                    throw new VerifyException($"output '{g.OutputNames[i]}' ({g.Body.Results[i].Type}) cannot replace {g.Args[k].Value} ({g.Args[k].Value.Type})");
            }
        }
        VerifyBlock(g, g.Body, names);
    }

    private static void VerifyBlock(Graph g, Block block, HashSet<string> names)
    {
        var scope = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        foreach (var a in block.Args) Define(g, a, scope, names, null, block, -1);
        for (int i = 0; i < block.Nodes.Length; i++)
        {
            var n = block.Nodes[i];
            string Where(string msg) => Context(block, i, msg);
            var sig = n.Op.Signature;
            if (n.Inputs.Length < sig.MinOperands || n.Inputs.Length > sig.MaxOperands)
                throw new VerifyException(Where($"{n.Op.Name} takes {sig.OperandCount} operands, has {n.Inputs.Length}"));
            foreach (var input in n.Inputs)
                if (!scope.Contains(input))
                    throw new VerifyException(Where($"operand {input} is not defined before its use in this block"));
            foreach (var spec in sig.Attrs.Where(s => s.Default is null))
                if (!n.Attrs.ContainsKey(spec.Name))
                    throw new VerifyException(Where($"{n.Op.Name} is missing attribute '{spec.Name}'"));
            ImmutableArray<TensorType> types;
            try
            {
                types = n.Op.Infer(new InferContext(n.Op, n.Inputs.Select(v => v.Type).ToImmutableArray(), n.Attrs, g.DimsByName, n.Regions));
            }
            catch (TypeErrorException e)
            {
                throw new VerifyException(Where(e.Message));
            }
            if (types.Length != n.Outputs.Length)
                throw new VerifyException(Where($"{n.Op.Name} produces {types.Length} results, the node has {n.Outputs.Length}"));
            for (int k = 0; k < types.Length; k++)
                if (!types[k].Equals(n.Outputs[k].Type))
                    throw new VerifyException(Where($"result {n.Outputs[k]} has type {Describe(n.Outputs[k].Type, types[k])} but {n.Op.Name} infers {Describe(types[k], n.Outputs[k].Type)}"));
            if (n.Op.HasRegion) VerifyRepeat(g, n, names, Where);
            else if (n.Regions.Length > 0) throw new VerifyException(Where($"{n.Op.Name} takes no regions"));
            foreach (var o in n.Outputs) Define(g, o, scope, names, n, block, i);
        }
        foreach (var r in block.Results)
            if (!scope.Contains(r)) throw new VerifyException($"result {r} is not defined in its block");
    }

    private static void VerifyRepeat(Graph g, Node n, HashSet<string> names, Func<string, string> where)
    {
        if (n.Regions.Length != 1) throw new VerifyException(where("repeat needs exactly one region"));
        var body = n.Regions[0];
        var expected = ControlOps.BodyArgTypes(n).ToList();
        if (body.Args.Length != expected.Count)
            throw new VerifyException(where($"repeat body has {body.Args.Length} arguments, operands imply {expected.Count}"));
        for (int k = 0; k < expected.Count; k++)
            if (!expected[k].Equals(body.Args[k].Type))
                throw new VerifyException(where($"repeat body argument {body.Args[k]} is {body.Args[k].Type}, operand implies {expected[k]}"));
        if (body.Results.Length != n.Outputs.Length)
            throw new VerifyException(where($"repeat body yields {body.Results.Length} values for {n.Outputs.Length} results"));
        var carried = (int)n.Attr<IntAttr>("carried").Value;
        for (int k = 0; k < body.Results.Length; k++)
        {
            var r = body.Results[k].Type;
            var expect = k < carried ? r : r.WithDims(r.Dims.Insert(0, n.Outputs[k].Type.Dims.FirstOrDefault()));
            if (!expect.Equals(n.Outputs[k].Type))
                throw new VerifyException(where($"repeat body yields {body.Results[k]}: {r} for {(k < carried ? "carried" : "stacked")} result {n.Outputs[k].Type}"));
        }
        VerifyBlock(g, body, names);
    }

    private static void Define(Graph g, Value v, HashSet<Value> scope, HashSet<string> names, Node? n, Block block, int index)
    {
        string Where(string msg) => n is null ? msg : Context(block, index, msg);
        if (!names.Add(v.Name)) throw new VerifyException(Where($"value name {v} is defined twice"));
        scope.Add(v);
        foreach (var d in v.Type.Dims)
            if (!g.DimsByName.TryGetValue(d.Name, out var decl) || decl.Size != d.Size)
                throw new VerifyException(Where($"{v} uses dim {d.Name}={d.Size}, which is not declared with that size"));
        if (v.Type.Dims.Select(d => d.Name).Distinct().Count() != v.Type.Rank)
            throw new VerifyException(Where($"{v}: {v.Type} names a dim twice"));
        if (v.Sharding is { } s) CheckSharding(g, v, s, Where);
    }

    private static void CheckSharding(Graph g, Value v, Sharding s, Func<string, string> where)
    {
        if (s.DimAxes.Length != v.Type.Rank)
            throw new VerifyException(where($"{v}: sharding has {s.DimAxes.Length} dims, type has {v.Type.Rank}"));
        var used = new HashSet<string>();
        foreach (var axis in s.AllAxes)
        {
            if (g.Mesh is null || !g.Mesh.HasAxis(axis))
                throw new VerifyException(where($"{v}: sharding uses mesh axis '{axis}', which the mesh does not have"));
            if (!used.Add(axis))
                throw new VerifyException(where($"{v}: mesh axis '{axis}' is used twice in one sharding"));
        }
    }

    /// <summary>A type's text, with dim sizes when it prints like the type it is compared with (same names, other sizes).</summary>
    private static string Describe(TensorType t, TensorType other) =>
        t.ToString() != other.ToString() ? t.ToString()
            : $"{DTypes.Name(t.DType)}[{string.Join(", ", t.Dims.Select(d => $"{d.Name}={d.Size}"))}]";

    /// <summary>The error with the bad node marked and one neighbour on each side.</summary>
    private static string Context(Block block, int i, string msg)
    {
        var sb = new StringBuilder("verifier: ").Append(msg).Append('\n');
        for (int k = Math.Max(0, i - 1); k <= Math.Min(block.Nodes.Length - 1, i + 1); k++)
            sb.Append(k == i ? ">>> " : "    ").Append(Printer.FormatNode(block.Nodes[k])).Append('\n');
        return sb.ToString().TrimEnd('\n');
    }
}
