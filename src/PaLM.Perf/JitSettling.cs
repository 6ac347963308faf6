using System.Diagnostics;
using System.Runtime;

namespace PaLM.Perf;

/// <summary>
/// Watches .NET's JIT between warm-up steps: it reads settled once no method has been compiled for
/// <see cref="QuietSteps"/> steps and <see cref="QuietTime"/>. One quiet step is not enough: .NET waits until no new
/// method has been compiled for 100 ms before it counts calls, then re-compiles hot methods on a background thread, so
/// short steps read quiet in that pause (palm-tiny: 1411 methods compiled after a quiet 4th step). Shared by
/// `palmc bench --warmup auto` (<see cref="StepBench"/>) and the BenchmarkDotNet setup (<see cref="SingleDeviceStep.SettleJit"/>).
/// </summary>
internal sealed class JitSettling
{
    public const int QuietSteps = 2;
    public static readonly TimeSpan QuietTime = TimeSpan.FromSeconds(1);

    private readonly Stopwatch _sinceCompile = Stopwatch.StartNew();
    private int _quietSteps;

    /// <summary>Methods compiled in the process as of the last <see cref="AfterStep"/> (or construction).</summary>
    public long Compiled { get; private set; } = JitInfo.GetCompiledMethodCount();

    /// <summary>Notes a finished step; returns whether the JIT now reads settled.</summary>
    public bool AfterStep()
    {
        long now = JitInfo.GetCompiledMethodCount();
        if (now != Compiled)
        {
            _sinceCompile.Restart();
            _quietSteps = 0;
        }
        else _quietSteps++;
        Compiled = now;
        return _quietSteps >= QuietSteps && _sinceCompile.Elapsed >= QuietTime;
    }
}
