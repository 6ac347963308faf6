using System.CommandLine;
using PaLM.CodeGen;
using PaLM.Reference;
using PaLM.Runtime;

namespace PaLM.Cli.Commands;

/// <summary>
/// <c>palmc run FILE [--mesh ...] [--seed N] [--reference]</c>: partitions for the mesh, compiles in memory and prints
/// the loss on a seeded batch, the same way the compiled program does, with one in-process virtual device per mesh
/// position. <c>--reference</c> also runs the hand-written eager TorchSharp PaLM (one device) on the same weights (on a
/// mesh, the whole tensors the devices' pieces are cut from) and batch, for comparison.
/// </summary>
internal static class RunCommand
{
    public static Command Create()
    {
        var file = Common.FileArgument();
        var seed = new Option<long>("--seed") { Description = "seed of the parameters (the batch uses seed + 1)", DefaultValueFactory = _ => 0 };
        var reference = new Option<bool>("--reference") { Description = "also print the eager reference model's loss (PaLM graphs only)" };
        var mesh = Common.MeshOption();
        var cmd = new Command("run", "Compile in memory and print the loss on a seeded batch, on every device of the mesh.") { file, mesh, seed, reference };
        cmd.SetAction(r => Common.Guard(() =>
        {
            var spmd = Common.Partition(Common.LoadToCompile(r.GetValue(file)!), r.GetValue(mesh));
            var program = RoslynCompiler.CompileInMemory(Emitter.Emit(spmd.Local));
            var s = r.GetValue(seed);
            var code = ProgramHost.RunLoss(program, s);
            if (code == 0 && r.GetValue(reference))
                code = RunReference(program, s);
            return code;
        }));
        return cmd;
    }

    private static int RunReference(IGraphProgram program, long seed)
    {
        var config = ReferenceRunner.ConfigFrom(program)
            ?? throw new UserError($"error: --reference needs a PaLM graph (parameters {string.Join(", ", PalmModel.WeightNames)})");
        var loss = ReferenceRunner.Loss(program, config, seed);
        Console.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"reference loss = {loss:F6}"));
        return 0;
    }
}
