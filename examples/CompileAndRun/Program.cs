// palmc as a library: the pipeline `palmc run` drives, in a few calls.
//
//   dotnet run --project examples/CompileAndRun [-- path/to/graph.palm]
//
// Without an argument it compiles graphs/palm-tiny.palm from the repository (the folder holding PaLM.Compiler.sln,
// found by walking up from the current directory, then from the program's own folder).

using System.Globalization;
using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;

string path;
if (args.Length > 0)
{
    path = args[0];
}
else
{
    var root = FindRepoRoot(Environment.CurrentDirectory) ?? FindRepoRoot(AppContext.BaseDirectory);
    if (root is null)
    {
        Console.Error.WriteLine("error: PaLM.Compiler.sln not found above the current directory or this program; pass a .palm file");
        return 1;
    }
    path = Path.Combine(root, "graphs", "palm-tiny.palm");
}

Graph graph;
try
{
    // 1. DSL → verified IR graph. Every error in the file comes back at once, each with FILE:LINE:COL.
    graph = Frontend.CompileFile(path);
}
catch (DslException e)
{
    Console.Error.WriteLine(e.FormatAll());
    return 1;
}
catch (IOException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}

// 2. Sizes and costs counted over the IR.
var stats = Stats.Compute(graph);
Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{graph.Name}: parameters = {stats.Parameters:N0}"));

// 3. IR → C# (a Roslyn syntax tree), 4. compiled and loaded into this process.
var source = Emitter.Emit(graph);
var program = RoslynCompiler.CompileInMemory(source);

// 5. Seeded parameters and batch, one forward pass; prints "loss = …" as `palmc run` does.
return ProgramHost.RunLoss(program, seed: 0);

static string? FindRepoRoot(string start)
{
    for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
        if (File.Exists(Path.Combine(d.FullName, "PaLM.Compiler.sln"))) return d.FullName;
    return null;
}
