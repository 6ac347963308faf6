using PaLM.Runtime.Native;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

/// <summary>
/// <see cref="Rt.Initialize"/> advises the main heap for transparent huge pages where the kernel leaves them to
/// madvise (HeapTuning.ReserveHugePages). It acts only on the process's main thread, before the heap has grown, so
/// each check is a fresh child process (<see cref="FirstCalls"/> dispatches to <see cref="Child"/>): it initializes,
/// writes a 64 MB tensor, and reports whether the mapping holding it carries the kernel's "hg" flag.
/// </summary>
public sealed class HugePageTests
{
    public const string Command = "huge-page-heap";

    [Fact]
    public async Task LargeTensorsLandInHugePageAdvisedMemoryUnlessTurnedOff()
    {
        bool madviseMode = Read("/sys/kernel/mm/transparent_hugepage/enabled").Contains("[madvise]");
        bool strictOvercommit = Read("/proc/sys/vm/overcommit_memory").Trim() == "2";
        bool expected = OperatingSystem.IsLinux() && madviseMode && !strictOvercommit;

        var on = await RunChild(null);
        Assert.True(on.Advised == expected, $"PALMC_THP unset: expected advised={expected} (madvise mode {madviseMode}, strict overcommit {strictOvercommit}); child said: {on.Line}");
        Assert.True(on.Reserved > 0 == expected, on.Line);

        var off = await RunChild("0");
        Assert.False(off.Advised, $"PALMC_THP=0: {off.Line}");
        Assert.Equal(0, off.Reserved);
    }

    private static async Task<(bool Advised, long Reserved, string Line)> RunChild(string? thp)
    {
        var (exit, stdout, stderr) = await ChildProcess.Run([Command], configure: psi =>
        {
            if (thp is null) psi.Environment.Remove("PALMC_THP"); else psi.Environment["PALMC_THP"] = thp;
        });
        var line = stdout.Trim();
        Assert.True(exit == 0, $"exit {exit}\n{line}\n{stderr}");
        var fields = line.Split(' ').Select(f => f.Split('=')).ToDictionary(f => f[0], f => f[1]);
        return (fields["advised"] == "1", long.Parse(fields["reserved"]), line);
    }

    /// <summary>The child's side: prints <c>advised=0|1 reserved=BYTES anon_huge_kb=KB</c>.</summary>
    public static int Child()
    {
        TestUtil.Init();
        using var scope = Rt.Scope();
        var t = empty(16L << 20, ScalarType.Float32).fill_(1f);
        long address = TensorMemory.Address(t);
        bool advised = false;
        long anonHugeKb = 0;
        bool inside = false;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            // A mapping's header line is "lo-hi perms ...", its fields "Name: value" lines after it.
            if (line.Length > 0 && Uri.IsHexDigit(line[0]) && line.Split(' ')[0].Split('-') is [var lo, var hi])
            {
                inside = Convert.ToInt64(lo, 16) <= address && address < Convert.ToInt64(hi, 16);
                continue;
            }
            if (!inside) continue;
            if (line.StartsWith("AnonHugePages:")) anonHugeKb = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
            if (line.StartsWith("VmFlags:")) advised = line.Split(' ').Contains("hg");
        }
        Console.WriteLine($"advised={(advised ? 1 : 0)} reserved={HeapTuning.HugePageBytes} anon_huge_kb={anonHugeKb}");
        GC.KeepAlive(t);
        return 0;
    }

    private static string Read(string path) => File.Exists(path) ? File.ReadAllText(path) : "";
}
