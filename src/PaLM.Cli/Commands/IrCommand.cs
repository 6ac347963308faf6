using System.CommandLine;
using PaLM.IR;

namespace PaLM.Cli.Commands;

/// <summary>
/// <c>palmc ir FILE [--format text|json|pb] [-o OUT] [--partitioned [--mesh ...]]</c>: print or write the IR; reads .pb
/// and .json back. <c>--partitioned</c> prints the per-device program (local dims, collectives) instead, as text.
/// </summary>
internal static class IrCommand
{
    public static Command Create()
    {
        var file = Common.FileArgument();
        var format = new Option<string>("--format", "-f") { Description = "text, json or pb (default: from -o's extension, else text)" };
        format.AcceptOnlyFromAmong("text", "json", "pb");
        var output = new Option<string?>("--output", "-o") { Description = "write to this file (atomically) instead of standard output" };
        var partitioned = new Option<bool>("--partitioned") { Description = "print the per-device program the mesh gives (text only)" };
        var mesh = Common.MeshOption();
        var cmd = new Command("ir", "Print or write a graph's IR (text, JSON or protobuf).") { file, format, output, partitioned, mesh };
        cmd.SetAction(r => Common.Guard(() =>
        {
            var g = Common.Load(r.GetValue(file)!);
            if (r.GetValue(mesh) is not null && !r.GetValue(partitioned))
                throw new UserError("error: --mesh applies to the per-device program; add --partitioned");
            if (r.GetValue(partitioned))
            {
                if (r.GetValue(format) is "json" or "pb")
                    throw new UserError("error: the per-device program prints as text; save the source graph and re-partition it instead");
                g = Common.Partition(g, r.GetValue(mesh)).Local;
            }
            var outPath = r.GetValue(output);
            var fmt = r.GetValue(format) ?? (outPath is null ? "text" : Path.GetExtension(outPath).ToLowerInvariant() switch
            {
                ".pb" => "pb",
                ".json" => "json",
                _ => "text",
            });
            if (fmt == "pb" && outPath is null) throw new UserError("error: --format pb writes binary; give -o FILE.pb");
            byte[] bytes = fmt switch
            {
                "pb" => Serialization.ToBytes(g),
                "json" => System.Text.Encoding.UTF8.GetBytes(Serialization.ToJson(g) + "\n"),
                _ => System.Text.Encoding.UTF8.GetBytes(Printer.Print(g)),
            };
            if (outPath is null) Console.Out.Write(System.Text.Encoding.UTF8.GetString(bytes));
            else
            {
                AtomicFile.WriteAllBytes(outPath, bytes);
                Console.Error.WriteLine($"wrote {outPath} ({bytes.Length} bytes, {fmt})");
            }
            return 0;
        }));
        return cmd;
    }
}
