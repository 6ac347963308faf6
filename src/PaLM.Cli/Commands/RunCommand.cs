using System.CommandLine;

namespace PaLM.Cli.Commands;

internal static class RunCommand
{
    public static Command Create() => new("run", "not yet");
}
