using System.Collections.Frozen;

namespace PaLM.IR;

/// <summary>
/// The one table of ops. Each op family registers its ops in its own file (Ops/*.cs); passes, the DSL binder and code
/// generation look ops up here and never switch over op names.
/// </summary>
public static class OpTable
{
    private static readonly FrozenDictionary<string, OpDef> s_ops = Build();

    public static IEnumerable<OpDef> All => s_ops.Values.OrderBy(o => o.Name, StringComparer.Ordinal);

    public static bool TryGet(string name, out OpDef op) => s_ops.TryGetValue(name, out op!);

    public static OpDef Get(string name) =>
        s_ops.TryGetValue(name, out var op) ? op : throw new KeyNotFoundException($"no op '{name}' in the op table");

    private static FrozenDictionary<string, OpDef> Build()
    {
        var ops = new Dictionary<string, OpDef>(StringComparer.Ordinal);
        void Add(OpDef op)
        {
            if (!ops.TryAdd(op.Name, op)) throw new InvalidOperationException($"op '{op.Name}' registered twice");
        }
        ElementwiseOps.Register(Add);
        ContractionOps.Register(Add);
        ReductionOps.Register(Add);
        LayoutOps.Register(Add);
        NnOps.Register(Add);
        ControlOps.Register(Add);
        CollectiveOps.Register(Add);
        return ops.ToFrozenDictionary(StringComparer.Ordinal);
    }
}
