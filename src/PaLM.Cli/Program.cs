using System.CommandLine;
using PaLM.Cli.Commands;

namespace PaLM.Cli;

/// <summary>palmc's entry point: one subcommand per pipeline stage a user wants to see.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        // The matmul tuner's choices outlive the process under palmc's cache folder (PALMC_CACHE_DIR; off turns it off).
        Runtime.Gemm.Store ??= Perf.GemmTuningCache.Default;
        var root = new RootCommand("palmc: compiles PaLM-family models written in the palmc DSL to C# over TorchSharp.")
        {
            CheckCommand.Create(),
            IrCommand.Create(),
            StatsCommand.Create(),
            CompileCommand.Create(),
            RunCommand.Create(),
            PlanCommand.Create(),
            TrainCommand.Create(),
            BenchCommand.Create(),
            SimulateCommand.Create(),
            LaunchCommand.Create(),
        };
        return root.Parse(args).Invoke();
    }
}
