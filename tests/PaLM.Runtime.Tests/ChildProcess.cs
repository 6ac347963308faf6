using System.Diagnostics;

namespace PaLM.Runtime.Tests;

/// <summary>Runs this test assembly as a child process (its entry point is <see cref="FirstCalls.Main"/>), for checks
/// that need a fresh process: one-time set-up on the process's first calls or its main thread.</summary>
internal static class ChildProcess
{
    /// <summary>Exit code and output of <c>dotnet exec THIS.dll ARGS</c>; a child that has not exited within two
    /// minutes is killed and fails the test.</summary>
    public static async Task<(int Exit, string Stdout, string Stderr)> Run(string[] args, string? context = null, Action<ProcessStartInfo>? configure = null)
    {
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } p && File.Exists(p) ? p : "dotnet";
        var psi = new ProcessStartInfo(dotnet) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "exec", typeof(ChildProcess).Assembly.Location }.Concat(args)) psi.ArgumentList.Add(a);
        configure?.Invoke(psi);
        using var child = Process.Start(psi)!;
        var stdout = child.StandardOutput.ReadToEndAsync();
        var stderr = child.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        try { await child.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            child.Kill(entireProcessTree: true);
            Assert.Fail($"{context}no exit within 2 minutes\n{await stdout}");
        }
        return (child.ExitCode, await stdout, await stderr);
    }
}
