using System.CommandLine;
using System.Diagnostics;
using PaLM.CodeGen;

namespace PaLM.Cli.Commands;

/// <summary>
/// <c>palmc compile FILE -o DIR [--mesh ...]</c>: a runnable program, <c>dotnet DIR/NAME.dll</c>, and its C# source:
/// the per-device program of the mesh, which the program runs on one in-process virtual device per mesh position.
/// </summary>
internal static class CompileCommand
{
    public static Command Create()
    {
        var file = Common.FileArgument();
        var output = new Option<string>("--output", "-o") { Description = "output folder", Required = true };
        var mesh = Common.MeshOption();
        var cmd = new Command("compile", "Compile a graph to C# and a runnable program: DIR/NAME.cs, DIR/NAME.dll.") { file, output, mesh };
        cmd.SetAction(r => Common.Guard(() =>
        {
            var path = r.GetValue(file)!;
            var dir = r.GetValue(output)!;
            var sw = Stopwatch.StartNew();
            var g = Common.Load(path);
            var name = Path.GetFileNameWithoutExtension(path);
            var source = Emitter.Emit(Common.Partition(g, r.GetValue(mesh)).Local, name + ".cs");
            var written = ProgramWriter.Write(source, dir, name);
            Console.WriteLine($"wrote {written.Source} and {written.Assembly} in {sw.Elapsed.TotalSeconds:F1} s " +
                $"({written.FilesLinked} files linked, {written.FilesCopied} copied{(written.LibrariesPatched > 0 ? ", libLibTorchSharp patched" : "")})");
            Console.WriteLine($"run it: dotnet {written.Assembly}");
            return 0;
        }));
        return cmd;
    }
}
