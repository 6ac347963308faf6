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
        var train = new Option<bool>("--train") { Description = "compile the whole training step (forward, backward, optimizer); the program trains when run" };
        var training = new TrainingOptions();
        var cmd = new Command("compile", "Compile a graph to C# and a runnable program: DIR/NAME.cs, DIR/NAME.dll.") { file, output, mesh, train };
        training.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(() =>
        {
            var path = r.GetValue(file)!;
            var dir = r.GetValue(output)!;
            var sw = Stopwatch.StartNew();
            var g = Common.LoadToCompile(path);
            var name = Path.GetFileNameWithoutExtension(path);
            if (!r.GetValue(train) && (r.GetResult(training.Remat) is { Implicit: false } || r.GetValue(training.NoFuse)))
                throw new UserError("error: --remat and --no-fuse apply to training steps: add --train");
            var local = r.GetValue(train) ? training.Compile(r, g, r.GetValue(mesh)).Local : Common.Partition(g, r.GetValue(mesh)).Local;
            var source = Emitter.Emit(local, name + ".cs");
            var written = ProgramWriter.Write(source, dir, name);
            Console.WriteLine($"wrote {written.Source} and {written.Assembly} in {sw.Elapsed.TotalSeconds:F1} s " +
                $"({written.FilesLinked} files linked, {written.FilesCopied} copied{(written.LibrariesPatched > 0 ? ", libLibTorchSharp patched" : "")})");
            Console.WriteLine(r.GetValue(train) ? $"train with it: dotnet {written.Assembly} [--steps N] [--data PATH] [--checkpoint DIR]" : $"run it: dotnet {written.Assembly}");
            return 0;
        }));
        return cmd;
    }
}
