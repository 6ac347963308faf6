using System.Text;

namespace PaLM.IR;

/// <summary>
/// The canonical text form of the IR (HLO-like). Deterministic: golden tests and the protobuf round trip compare it.
/// Locations print as file name (no folder), line and column, so text does not depend on the working directory.
/// </summary>
public static class Printer
{
    public static string Print(Graph g)
    {
        var sb = new StringBuilder();
        sb.Append("graph ").Append(g.Name).Append('\n');
        sb.Append("dims ").Append(string.Join(", ", g.Dims.Select(d => $"{d.Name}={d.Size}"))).Append('\n');
        if (g.Mesh is { } mesh) sb.Append("mesh ").Append(mesh).Append('\n');
        sb.Append('\n');
        foreach (var a in g.Args)
        {
            sb.Append(a.Kind switch { ArgKind.Parameter => "param ", ArgKind.State => "state ", _ => "input " }).Append(FormatValueDecl(a.Value));
            if (a.Init is { } init) sb.Append(" init=").Append(init.Format());
            if (a.Spmd is { } spmd) sb.Append(" global=").Append(spmd.GlobalType).Append(" shard").Append(spmd.Sharding.Format(spmd.GlobalType));
            AppendLoc(sb, a.Value.Loc).Append('\n');
        }
        sb.Append('\n');
        foreach (var n in g.Body.Nodes) AppendNode(sb, n, "");
        for (int i = 0; i < g.Body.Results.Length; i++)
        {
            sb.Append("output ").Append(g.OutputNames[i]).Append(" = ").Append(g.Body.Results[i]);
            if (!g.OutputUpdates.IsDefaultOrEmpty && g.OutputUpdates[i] >= 0) sb.Append("  # updates ").Append(g.Args[g.OutputUpdates[i]].Value);
            sb.Append('\n');
        }
        return sb.ToString();
    }

    public static string FormatNode(Node n)
    {
        var sb = new StringBuilder();
        AppendNode(sb, n, "", withRegions: false);
        return sb.ToString().TrimEnd('\n');
    }

    /// <summary>A node without types, location or regions: <c>%y = op(%a, %b) {attrs}</c>.</summary>
    public static string FormatNodeHead(Node n)
    {
        var sb = new StringBuilder();
        sb.Append(string.Join(", ", n.Outputs.Select(o => o.ToString()))).Append(" = ").Append(n.Op.Name);
        sb.Append('(').Append(string.Join(", ", n.Inputs.Select(i => i.ToString()))).Append(')');
        if (n.Attrs.Count > 0)
            sb.Append(" {").Append(string.Join(", ", n.Attrs.Select(kv => $"{kv.Key}={kv.Value.Format()}"))).Append('}');
        return sb.ToString();
    }

    private static void AppendNode(StringBuilder sb, Node n, string indent, bool withRegions = true)
    {
        sb.Append(indent).Append(FormatNodeHead(n));
        sb.Append(" : ").Append(string.Join(", ", n.Outputs.Select(FormatType)));
        if (withRegions && n.Regions.Length > 0)
        {
            foreach (var r in n.Regions)
            {
                sb.Append(" {\n").Append(indent).Append("  ^(")
                  .Append(string.Join(", ", r.Args.Select(FormatValueDecl))).Append(")\n");
                foreach (var inner in r.Nodes) AppendNode(sb, inner, indent + "  ");
                sb.Append(indent).Append("  yield ").Append(string.Join(", ", r.Results.Select(v => v.ToString()))).Append('\n');
                sb.Append(indent).Append('}');
            }
        }
        AppendLoc(sb, n.Loc).Append('\n');
    }

    private static string FormatType(Value v) =>
        v.Sharding is { } s ? $"{v.Type} shard{s.Format(v.Type)}" : v.Type.ToString();

    private static string FormatValueDecl(Value v) => $"{v}: {FormatType(v)}";

    private static StringBuilder AppendLoc(StringBuilder sb, SourceLoc? loc) =>
        loc is null ? sb : sb.Append("  # ").Append(Path.GetFileName(loc.File)).Append(':').Append(loc.Line).Append(':').Append(loc.Column);
}
