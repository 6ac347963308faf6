using System.CommandLine;
using PaLM.IR;

namespace PaLM.Cli.Commands;

/// <summary><c>palmc check FILE</c>: parse, type-check and verify.</summary>
internal static class CheckCommand
{
    public static Command Create()
    {
        var file = Common.FileArgument();
        var cmd = new Command("check", "Parse and verify a graph; report every error as FILE:LINE:COL.") { file };
        cmd.SetAction(r => Common.Guard(() =>
        {
            var path = r.GetValue(file)!;
            var g = Common.Load(path);
            var nodes = CountNodes(g.Body);
            Console.WriteLine($"{path}: ok ({g.Args.Length} arguments, {nodes} ops, {g.Dims.Length} dims)");
            return 0;
        }));
        return cmd;
    }

    private static int CountNodes(Block b) => b.Nodes.Sum(n => 1 + n.Regions.Sum(CountNodes));
}
