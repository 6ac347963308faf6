using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using PaLM.IR;
using Spectre.Console;

namespace PaLM.Cli.Commands;

/// <summary><c>palmc stats FILE [--json]</c>: parameters, layers and FLOPs per token (PaLM's formula and exact IR count).</summary>
internal static class StatsCommand
{
    public static Command Create()
    {
        var file = Common.FileArgument();
        var json = new Option<bool>("--json") { Description = "print JSON" };
        var cmd = new Command("stats", "Parameters, layers and FLOPs per token of a graph.") { file, json };
        cmd.SetAction(r => Common.Guard(() =>
        {
            var g = Common.Load(r.GetValue(file)!);
            var s = Stats.Compute(g);
            if (r.GetValue(json))
            {
                var doc = new Dictionary<string, object?>
                {
                    ["graph"] = g.Name,
                    ["parameters"] = s.Parameters,
                    ["layers"] = s.Layers,
                    ["tokens_per_step"] = s.TokensPerStep,
                    ["flops_per_token_palm"] = s.FlopsPerTokenPalm,
                    ["forward_flops_per_token_ir"] = s.ForwardFlopsPerToken,
                    ["forward_flops_per_step_ir"] = s.ForwardFlops,
                    ["forward_matmul_fraction_ir"] = Math.Round(s.MatmulFraction, 6),
                };
                Console.WriteLine(JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));
                return 0;
            }
            var t = new Table().AddColumn("quantity").AddColumn(new TableColumn("value").RightAligned());
            string N(double v) => v.ToString("N0", CultureInfo.InvariantCulture);
            t.AddRow("parameters", $"{N(s.Parameters)} ({s.Parameters / 1e9:F2}B)");
            t.AddRow("layers", N(s.Layers));
            t.AddRow("tokens per step", N(s.TokensPerStep));
            t.AddRow("FLOPs/token, PaLM appendix B (6N + 12LHQT)", s.FlopsPerTokenPalm is { } p ? N(p) : "n/a (no heads/head_dim/seq dims)");
            t.AddRow("forward FLOPs/token, counted over the IR", N(s.ForwardFlopsPerToken));
            t.AddRow("forward matmul share, IR", $"{s.MatmulFraction:P2}");
            AnsiConsole.Write(new Rule(g.Name).LeftJustified());
            AnsiConsole.Write(t);
            return 0;
        }));
        return cmd;
    }
}
