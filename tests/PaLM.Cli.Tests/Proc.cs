using System.Diagnostics;
using System.Text;

namespace PaLM.Cli.Tests;

/// <summary>What a finished process left: exit code and everything it wrote.</summary>
internal sealed record ProcResult(string Command, int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"$ {Command}\nexit {ExitCode}\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}";

    /// <summary>Stdout's lines, without blank ones.</summary>
    public string[] Lines => Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>Fails with the whole transcript unless the exit code is <paramref name="expected"/>.</summary>
    public ProcResult Expect(int expected)
    {
        Assert.True(ExitCode == expected, $"expected exit {expected}:\n{this}");
        return this;
    }
}

/// <summary>Runs <c>dotnet</c> programs (palmc, compiled graphs, the example) as child processes.</summary>
internal static class Proc
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(120);

    /// <summary>The dotnet host running these tests when known (DOTNET_HOST_PATH), else "dotnet" from PATH.</summary>
    private static readonly string s_dotnet =
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } p && File.Exists(p) ? p : "dotnet";

    /// <summary><c>dotnet palmc.dll ARGS</c>, run from the repository root (so graphs/... paths resolve).</summary>
    public static Task<ProcResult> Palmc(params string[] args) => Dotnet(Repo.PalmcDll, args);

    /// <summary><c>dotnet DLL ARGS</c> with TERM=dumb and no PALMC_DEBUG, stdout and stderr captured, killed after the timeout.</summary>
    public static async Task<ProcResult> Dotnet(string dll, string[] args, string? cwd = null, TimeSpan? timeout = null, IReadOnlyDictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo(s_dotnet)
        {
            WorkingDirectory = cwd ?? Repo.Root,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["TERM"] = "dumb";
        psi.Environment["NO_COLOR"] = "1";
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment.Remove("PALMC_DEBUG");
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;

        var command = $"(cd {psi.WorkingDirectory} && dotnet {string.Join(' ', psi.ArgumentList)})";
        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {command}");
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout ?? DefaultTimeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            Assert.Fail($"timed out after {(timeout ?? DefaultTimeout).TotalSeconds:F0} s: {command}\n--- stdout ---\n{await stdout}\n--- stderr ---\n{await stderr}");
        }
        return new ProcResult(command, process.ExitCode, Normalize(await stdout), Normalize(await stderr));
    }

    private static string Normalize(string s) => s.Replace("\r\n", "\n");

    /// <summary>The one <c>loss = …</c> line of a run's output.</summary>
    public static string LossLine(ProcResult r)
    {
        var lines = r.Lines.Where(l => l.StartsWith("loss = ", StringComparison.Ordinal)).ToList();
        Assert.True(lines.Count == 1, $"expected one 'loss = ' line:\n{r}");
        return lines[0];
    }

    /// <summary>
    /// <c>palmc run graphs/palm-tiny.palm</c>'s loss line, computed once for the test run: the value the compiled
    /// program and the example must reproduce.
    /// </summary>
    public static Task<string> TinyLoss => s_tinyLoss.Value;

    private static readonly Lazy<Task<string>> s_tinyLoss = new(async () =>
        LossLine((await Palmc("run", TestPaths.Graph("palm-tiny"))).Expect(0)));
}
