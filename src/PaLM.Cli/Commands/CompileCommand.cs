using System.CommandLine;

namespace PaLM.Cli.Commands;

internal static class CompileCommand
{
    public static Command Create() => new("compile", "not yet");
}
