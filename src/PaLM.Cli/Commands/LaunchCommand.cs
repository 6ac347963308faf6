using System.CommandLine;
using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace PaLM.Cli.Commands;

/// <summary>
/// <c>palmc launch -np N [--hostfile F] [--tcp [--tcp-if IF]] -- train|bench ARGS</c>: runs this palmc as N ranks of an
/// Open MPI job (mpirun), each with <c>--backend mpi</c>, passing the flags this environment needs (as root:
/// --allow-run-as-root; more ranks than cores: --oversubscribe; TERM=dumb and every PALMC_* variable exported to the
/// ranks). It relays the ranks' output and, when the job fails, says which rank ended it and how.
/// </summary>
internal static partial class LaunchCommand
{
    private static readonly string[] s_subcommands = ["train", "bench"];

    public static Command Create()
    {
        var np = new Option<int>("-np", "-n", "--np") { Description = "number of ranks (one device each: the mesh's device count)", Required = true };
        var hostfile = new Option<string?>("--hostfile") { Description = "Open MPI hostfile (one line per host: NAME slots=K) for a multi-host job" };
        var tcp = new Option<bool>("--tcp") { Description = "force the TCP transport (--mca btl tcp,self), as between hosts; with --tcp-if limits it to those interfaces" };
        var tcpIf = new Option<string>("--tcp-if") { Description = "interfaces for --tcp (comma-separated names or CIDRs)", DefaultValueFactory = _ => "lo" };
        var dryRun = new Option<bool>("--dry-run") { Description = "print the mpirun command instead of running it" };
        var rest = new Argument<string[]>("ARGS") { Description = "after --: the palmc subcommand and its arguments (train or bench)", Arity = ArgumentArity.OneOrMore };
        var cmd = new Command("launch", "Run a palmc subcommand as the ranks of an Open MPI job (mpirun), one device per rank.") { np, hostfile, tcp, tcpIf, dryRun, rest };
        cmd.SetAction(r => Common.Guard(() =>
        {
            var n = r.GetValue(np);
            if (n < 1) throw new UserError("error: -np must be at least 1");
            var sub = r.GetValue(rest)!.ToList();
            if (sub.Count == 0 || !s_subcommands.Contains(sub[0]))
                throw new UserError($"error: palmc launch runs one of: {string.Join(", ", s_subcommands)} (e.g. palmc launch -np 4 -- train graphs/palm-tiny.palm --mesh data=2,model=2)");
            int at = sub.IndexOf("--backend");
            if (at >= 0 && (at + 1 >= sub.Count || sub[at + 1] != "mpi"))
                throw new UserError("error: palmc launch runs every rank with --backend mpi; leave --backend out");
            if (at < 0) sub.AddRange(["--backend", "mpi"]);
            var file = r.GetValue(hostfile);
            if (file is not null && !File.Exists(file)) throw new UserError($"{file}: error: no such hostfile");

            var mpirun = FindMpirun() ?? throw new UserError(
                "error: mpirun not found on PATH; install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev)");
            var args = MpirunArguments(n, file, r.GetValue(tcp) ? r.GetValue(tcpIf) : null, sub);
            if (r.GetValue(dryRun))
            {
                Console.WriteLine(string.Join(' ', new[] { mpirun }.Concat(args).Select(Quote)));
                return 0;
            }
            return Run(mpirun, args, n);
        }));
        return cmd;
    }

    /// <summary>mpirun's arguments: the flags, then this palmc (dotnet + palmc.dll, or the apphost) with the subcommand.</summary>
    internal static List<string> MpirunArguments(int n, string? hostfile, string? tcpInterfaces, IReadOnlyList<string> sub)
    {
        var a = new List<string>();
        if (geteuid() == 0) a.Add("--allow-run-as-root");   // Open MPI refuses root otherwise
        a.Add("--oversubscribe");                            // more ranks than cores (or slots) is allowed, just slower
        a.AddRange(["-np", n.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        if (hostfile is not null) a.AddRange(["--hostfile", hostfile]);
        if (tcpInterfaces is not null)
            a.AddRange(["--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", tcpInterfaces, "--mca", "oob_tcp_if_include", tcpInterfaces]);
        // dotnet writes terminal escape sequences into relayed output unless TERM is dumb. The rest travel to other hosts
        // (local ranks inherit them anyway): fault injection and debugging switches, and where .NET is.
        a.AddRange(["-x", "TERM=dumb"]);
        foreach (var name in Environment.GetEnvironmentVariables().Keys.Cast<string>().Order(StringComparer.Ordinal))
            if (name.StartsWith("PALMC_", StringComparison.Ordinal) || name is "DOTNET_ROOT" or "NO_COLOR")
                a.AddRange(["-x", name]);
        a.AddRange(PalmcCommand());
        a.AddRange(sub);
        return a;
    }

    /// <summary>How to start this palmc again: <c>dotnet palmc.dll</c> when run through the dotnet host, else the executable.</summary>
    private static string[] PalmcCommand()
    {
        var process = Environment.ProcessPath ?? "dotnet";
        var dll = Assembly.GetEntryAssembly()?.Location;
        return Path.GetFileNameWithoutExtension(process) == "dotnet" && !string.IsNullOrEmpty(dll) ? [process, dll] : [process];
    }

    private static int Run(string mpirun, List<string> args, int n)
    {
        var psi = new ProcessStartInfo(mpirun) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["TERM"] = "dumb";
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi) ?? throw new UserError($"error: could not start {mpirun}");
        var failures = new List<string>();
        var gate = new object();
        void Relay(string? line, TextWriter to)
        {
            if (line is null) return;
            lock (gate)
            {
                to.WriteLine(line);
                if (Describe(line) is { } f) failures.Add(f);
            }
        }
        p.OutputDataReceived += (_, e) => Relay(e.Data, Console.Out);
        p.ErrorDataReceived += (_, e) => Relay(e.Data, Console.Error);
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        // Ctrl-C or a SIGTERM to palmc launch reaches mpirun, which stops the ranks.
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, ctx => { ctx.Cancel = true; Signal(p, 15); });
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, ctx => { ctx.Cancel = true; Signal(p, 2); });
        p.WaitForExit();
        var code = p.ExitCode;
        if (code == 0) return 0;
        Console.Out.Flush();
        var why = failures.Count > 0 ? string.Join("; ", failures.Distinct()) : "see the output above";
        Console.Error.WriteLine($"palmc launch: the {n}-rank job failed after {sw.Elapsed.TotalSeconds:F1} s (mpirun exit {code}): {why}");
        return code;
    }

    /// <summary>A line of mpirun's or a rank's output that says why the job ended, rephrased naming the rank; null otherwise.</summary>
    internal static string? Describe(string line)
    {
        if (SignalLine().Match(line) is { Success: true } s)
        {
            var sig = int.Parse(s.Groups["sig"].Value, System.Globalization.CultureInfo.InvariantCulture);
            var name = sig switch { 9 => "SIGKILL", 15 => "SIGTERM", 11 => "SIGSEGV", 6 => "SIGABRT", 2 => "SIGINT", _ => $"signal {sig}" };
            return $"rank {s.Groups["rank"].Value} ({Pid(s)}on {s.Groups["node"].Value}) was killed by {name}";
        }
        if (ExitLine().Match(line) is { Success: true } x)
            return $"rank {x.Groups["rank"].Value} ({Pid(x)}on {x.Groups["node"].Value}) exited without finalizing MPI";
        if (RankError().Match(line) is { Success: true } e && !e.Groups["msg"].Value.EndsWith("stopping all ranks", StringComparison.Ordinal))
            return $"rank {e.Groups["rank"].Value} failed: {e.Groups["msg"].Value}";
        return null;
    }

    // Open MPI 4.1 often reports PID 0 for a rank it lost; leave that out.
    private static string Pid(Match m) => m.Groups["pid"].Value is "0" ? "" : $"pid {m.Groups["pid"].Value} ";

    // Open MPI 4.x: "mpirun noticed that process rank 1 with PID 4242 on node vm exited on signal 9 (Killed)."
    [GeneratedRegex(@"process rank (?<rank>\d+) with PID (?<pid>\d+) on node (?<node>\S+) exited on signal (?<sig>\d+)")]
    private static partial Regex SignalLine();

    // "mpirun has exited due to process rank 1 with PID 4242 on node vm exiting improperly."
    [GeneratedRegex(@"process rank (?<rank>\d+) with PID (?<pid>\d+) on\s+node (?<node>\S+) exiting improperly")]
    private static partial Regex ExitLine();

    // What a rank prints when it stops the job itself (MpiBackend, MpiSession): "rank 2: error: ...".
    [GeneratedRegex(@"^rank (?<rank>\d+): (?<msg>error: .*)$")]
    private static partial Regex RankError();

    private static string? FindMpirun()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var path = Path.Combine(dir, "mpirun");
            if (File.Exists(path)) return path;
        }
        return null;
    }

    private static string Quote(string s) => s.Length > 0 && s.All(c => char.IsAsciiLetterOrDigit(c) || "-_./=,:@+".Contains(c)) ? s : $"'{s.Replace("'", "'\\''")}'";

    private static void Signal(Process p, int sig)
    {
        try { if (!p.HasExited) kill(p.Id, sig); } catch (InvalidOperationException) { }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern uint geteuid();

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
