using System.CommandLine;
using System.Security.Cryptography;
using System.Text;
using PaLM.Runtime.Distributed;

namespace PaLM.Cli.Commands;

/// <summary>
/// A command running as one rank of an MPI job (<c>--backend mpi</c>): joins the job, keeps ranks other than 0 quiet on
/// stdout, prefixes every rank's stderr lines with <c>rank R: </c>, and makes all ranks agree that they compiled the same
/// job before any of them trains. Disposing it finalizes MPI.
/// </summary>
internal sealed class MpiSession : IDisposable
{
    private MpiSession(MpiWorld world)
    {
        World = world;
        Backend = new MpiBackend(world);
    }

    public MpiWorld World { get; }

    public MpiBackend Backend { get; }

    public int Rank => World.Rank;

    /// <summary>The <c>--backend</c> option: <c>inprocess</c> (default) or <c>mpi</c>.</summary>
    public static Option<string> Option() => new("--backend")
    {
        Description = "inprocess: every device of the mesh in this process (default); mpi: this process is one rank of an mpirun job, one device per rank (see palmc launch)",
        DefaultValueFactory = _ => "inprocess",
    };

    /// <summary>Null for <c>inprocess</c>; for <c>mpi</c>, joins the job this process was started in.</summary>
    public static MpiSession? Start(string? backend)
    {
        switch (backend)
        {
            case null or "inprocess":
                return null;
            case "mpi":
                break;
            default:
                throw new UserError($"error: --backend: '{backend}' is not a backend (inprocess, mpi)");
        }
        MpiWorld world;
        try { world = MpiWorld.Join(); }
        catch (DllNotFoundException e) { throw new UserError($"error: --backend mpi: {e.Message}"); }
        catch (MpiException e) { throw new UserError($"error: --backend mpi: {e.Message}"); }
        if (world.Rank != 0)
            Console.SetOut(TextWriter.Null);
        Console.SetError(new RankPrefixWriter($"rank {world.Rank}: ", Console.Error));
        return new MpiSession(world);
    }

    /// <summary>What must be equal on every rank: the per-device program, the mesh and the options (never the rank).</summary>
    public sealed record Fingerprint(string Program, string Mesh, string Options)
    {
        public byte[] Bytes() => [.. Hash(Program), .. Hash(Mesh), .. Hash(Options)];

        private static byte[] Hash(string s) => SHA256.HashData(Encoding.UTF8.GetBytes(s));
    }

    /// <summary>
    /// Runs <paramref name="prepare"/> (load, check, compile) on every rank, then exchanges with every rank whether it
    /// succeeded, its error if not, and SHA-256 hashes of its program, mesh and options. If any rank failed or any
    /// differs from rank 0, every rank stops (exit 1) and rank 0 says which ranks and why; otherwise returns the value.
    /// </summary>
    public T Agree<T>(Func<(T Value, Fingerprint Fingerprint)> prepare)
    {
        T value = default!;
        byte[] mine;
        try
        {
            var (v, fp) = prepare();
            value = v;
            mine = [1, .. fp.Bytes()];
        }
        catch (Exception e)
        {
            var (text, _) = Common.Describe(e);
            mine = [0, .. Encoding.UTF8.GetBytes(text.TrimEnd())];
        }
        var all = AllGatherVariable(mine);
        var failed = Enumerable.Range(0, all.Length).Where(r => all[r][0] == 0).ToList();
        if (failed.Count > 0)
        {
            var lines = new StringBuilder($"error: {failed.Count} of {World.Size} rank(s) failed before training ({Ranks(failed)}); stopping all ranks");
            foreach (var r in failed)
                foreach (var line in Encoding.UTF8.GetString(all[r], 1, all[r].Length - 1).Split('\n'))
                    lines.Append($"\nrank {r}: {line}");
            throw Stop(lines.ToString());
        }
        string[] parts = ["program", "mesh", "options"];
        var differ = new List<string>();
        for (int r = 1; r < all.Length; r++)
        {
            var which = parts.Where((_, k) => !all[r].AsSpan(1 + 32 * k, 32).SequenceEqual(all[0].AsSpan(1 + 32 * k, 32))).ToList();
            if (which.Count > 0) differ.Add($"rank {r} differs from rank 0 in {string.Join(", ", which)}");
        }
        if (differ.Count > 0)
            throw Stop($"error: the ranks did not compile the same job: {string.Join("; ", differ)}. "
                + "Every rank must run the same command (same graph file contents, --mesh and options); stopping all ranks");
        return value;
    }

    // Rank 0 reports; the others stop quietly with the same exit status.
    private Exception Stop(string message) => Rank == 0 ? new UserError(message) : new QuietExit(1);

    private static string Ranks(List<int> ranks) => (ranks.Count == 1 ? "rank " : "ranks ") + string.Join(", ", ranks);

    /// <summary>Every rank's bytes (of any length), in rank order: lengths first, then the padded contents.</summary>
    private byte[][] AllGatherVariable(byte[] mine)
    {
        var lengths = World.AllGather(mine.LongLength);
        var max = (int)lengths.Max();
        var padded = new byte[max];
        mine.CopyTo(padded, 0);
        var all = World.AllGather(padded);
        return all.Select((b, r) => b.AsSpan(0, (int)lengths[r]).ToArray()).ToArray();
    }

    public void Dispose()
    {
        Console.Out.Flush();
        Console.Error.Flush();
        World.Dispose();
    }

    /// <summary>Prefixes each line with the rank, unless the line already names one (<c>rank N: </c>).</summary>
    private sealed class RankPrefixWriter(string prefix, TextWriter inner) : TextWriter
    {
        private readonly StringBuilder _line = new();

        public override Encoding Encoding => inner.Encoding;

        public override void Write(char value)
        {
            lock (_line)
            {
                if (value == '\n')
                {
                    var text = _line.ToString();
                    _line.Clear();
                    inner.Write(System.Text.RegularExpressions.Regex.IsMatch(text, @"^rank \d+: ") ? text + "\n" : prefix + text + "\n");
                    inner.Flush();
                }
                else if (value != '\r')
                    _line.Append(value);
            }
        }

        public override void Flush()
        {
            lock (_line)
            {
                if (_line.Length > 0)
                {
                    inner.Write(prefix + _line);
                    _line.Clear();
                }
                inner.Flush();
            }
        }
    }
}

/// <summary>Ends a command with <see cref="Code"/> and prints nothing (another rank reports the reason).</summary>
internal sealed class QuietExit(int code) : Exception($"exit {code}")
{
    public int Code { get; } = code;
}
