// palmc as a library: a graph compiled for a device mesh, every collective of the per-device program with the op and
// line that needed it, and how one tensor got its sharding (what `palmc plan --explain mlp` prints).
//
//   dotnet run --project examples/PlanExplain [-- [path/to/graph.palm] [data=2,model=2]]
//
// Without a path it uses graphs/palm-tiny.palm from the repository (the folder holding PaLM.Compiler.sln, found by
// walking up from the current directory, then from the program's own folder).

using PaLM.Dsl;
using PaLM.IR;
using PaLM.Spmd;

var root = FindRepoRoot(Environment.CurrentDirectory) ?? FindRepoRoot(AppContext.BaseDirectory);
if (args.Length == 0 && root is null)
{
    Console.Error.WriteLine("error: PaLM.Compiler.sln not found above the current directory or this program; pass a .palm file");
    return 1;
}
var path = args.Length > 0 ? args[0] : Path.Combine(root!, "graphs", "palm-tiny.palm");

try
{
    // 1. DSL → verified IR; 2. the mesh (axes the graph declares but this leaves out get size 1).
    var graph = Frontend.CompileFile(path);
    var mesh = Mesh.Parse(args.Length > 1 ? args[1] : "data=2,model=2");

    // 3. Propagate the @shard annotations and partition into the one program every device runs.
    var program = SpmdCompiler.Compile(graph, mesh);
    var plan = ShardingPlan.Of(program);

    // 4. Every collective with where it comes from, then the origin chain of one tensor.
    Console.WriteLine($"{graph.Name} on mesh {plan.Mesh} ({plan.Mesh.DeviceCount} devices): {plan.Collectives.Count} collectives");
    foreach (var c in plan.Collectives) Console.WriteLine("  " + ShardingPlan.FormatCollective(c));
    Console.WriteLine();
    Console.Write(plan.Explain("mlp") ?? "no tensor named 'mlp'\n");
    return 0;
}
catch (DslException e) { Console.Error.WriteLine(e.FormatAll()); }
catch (ShardingException e) { Console.Error.WriteLine($"error: {e.Message}"); }
catch (Exception e) when (e is FormatException or IOException) { Console.Error.WriteLine($"error: {e.Message}"); }
return 1;

static string? FindRepoRoot(string start)
{
    for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
        if (File.Exists(Path.Combine(d.FullName, "PaLM.Compiler.sln"))) return d.FullName;
    return null;
}
