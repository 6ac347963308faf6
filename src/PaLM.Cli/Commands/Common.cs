using System.CommandLine;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Spmd;

namespace PaLM.Cli.Commands;

/// <summary>What every command shares: loading a graph from DSL or protobuf, and turning failures into clean errors.</summary>
internal static class Common
{
    /// <summary>The text file to cut training batches from, or the default corpus; unreadable files are user errors.</summary>
    public static PaLM.Runtime.Training.ByteCorpus LoadCorpus(string? path)
    {
        try { return path is { } d ? PaLM.Runtime.Training.ByteCorpus.FromFile(d) : PaLM.Runtime.Training.ByteCorpus.Default(); }
        catch (Exception e) when (e is FileNotFoundException or InvalidDataException or DirectoryNotFoundException or ArgumentException)
        {
            throw new UserError($"error: {e.Message}");
        }
    }

    public static Argument<string> FileArgument(string description = "a .palm DSL file (or an IR file: .pb, .json)") =>
        new("FILE") { Description = description };

    /// <summary>Loads a graph by extension: .pb and .json are IR files, anything else is DSL.</summary>
    public static Graph Load(string path) => Load(path, null);

    /// <summary>
    /// <see cref="Load(string)"/> for a command that compiles the graph next: starts Roslyn's warm-up
    /// (<see cref="PaLM.CodeGen.RoslynCompiler.WarmUp"/>) once it is parsed, to run on the other core while the graph is
    /// transformed and emitted (started before parsing, it slows parsing).
    /// </summary>
    public static Graph LoadToCompile(string path)
    {
        var g = Load(path);
        PaLM.CodeGen.RoslynCompiler.WarmUp();
        return g;
    }

    /// <summary>Loads a graph with some DSL dims resized (<c>--batch</c>); IR files have fixed sizes and refuse.</summary>
    public static Graph Load(string path, IReadOnlyDictionary<string, long>? dims)
    {
        if (!File.Exists(path)) throw new UserError($"{path}: error: no such file");
        var ext = Path.GetExtension(path).ToLowerInvariant();
        if (dims is { Count: > 0 } && ext is ".pb" or ".json")
            throw new UserError($"{path}: error: an IR file's dims are fixed; resize dims ({string.Join(", ", dims.Keys)}) in its DSL source");
        return ext switch
        {
            ".pb" => Serialization.FromBytes(File.ReadAllBytes(path)),
            ".json" => Serialization.FromJson(File.ReadAllText(path)),
            _ => Frontend.CompileFile(path, dims),
        };
    }

    /// <summary>The <c>--mesh data=4,model=2</c> option: overrides the DSL's mesh (axes it leaves out get size 1).</summary>
    public static Option<string?> MeshOption() =>
        new("--mesh") { Description = "device mesh NAME=SIZE,... overriding the DSL's (e.g. data=4,model=2; axes left out get size 1)" };

    /// <summary>Parses a <c>--mesh</c> value (null when absent); a malformed one is a user error.</summary>
    public static Mesh? ParseMesh(string? text)
    {
        if (text is null) return null;
        try { return Mesh.Parse(text); }
        catch (FormatException e) { throw new UserError($"error: --mesh: {e.Message}"); }
    }

    /// <summary>Propagates and partitions <paramref name="g"/> over its mesh or the <c>--mesh</c> override.</summary>
    public static SpmdProgram Partition(Graph g, string? meshText) => SpmdCompiler.Compile(g, ParseMesh(meshText));

    /// <summary>Runs a command body: user errors print cleanly with exit code 1, never a stack trace.</summary>
    public static int Guard(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (QuietExit e)
        {
            return e.Code;
        }
        catch (Exception e) when (!IsInternal(e) || Environment.GetEnvironmentVariable("PALMC_DEBUG") is null)   // debugging: let it crash with the trace
        {
            var (text, code) = Describe(e);
            Console.Error.WriteLine(text);
            return code;
        }
    }

    private static bool IsInternal(Exception e) => Describe(e).Code == 70;

    /// <summary>What <see cref="Guard"/> prints for a failure, and the exit code: 1 for the user's errors, 70 for internal ones.</summary>
    public static (string Text, int Code) Describe(Exception e) => e switch
    {
        DslException d => ($"{d.FormatAll()}\n{d.Diagnostics.Count} error{(d.Diagnostics.Count == 1 ? "" : "s")}", 1),
        ShardingException or IrFormatException => ($"error: {e.Message}", 1),
        UserError => (e.Message, 1),
        PaLM.Sim.SimulationException => (e.Message.StartsWith("error:", StringComparison.Ordinal) || e.Message.Contains(": error:", StringComparison.Ordinal) ? e.Message : $"error: {e.Message}", 1),
        OverflowException => ("error: a size or FLOP count of this graph does not fit in 64 bits", 1),
        IOException or UnauthorizedAccessException => ($"error: {e.Message}", 1),
        _ => ($"palmc: internal error: {e.GetType().Name}: {e.Message}\n(set PALMC_DEBUG=1 for the stack trace, and please report it)", 70),
    };
}

/// <summary>An error in what the user asked for; its message is printed as is.</summary>
internal sealed class UserError(string message) : Exception(message);
