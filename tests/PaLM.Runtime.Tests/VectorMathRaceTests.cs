using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

/// <summary>
/// MKL's vector math (libtorch's fp32 exp, tanh, log) is set up on its first call in a process, and that setup races:
/// threads making the first call together can get a low-accuracy exp (relative error 1.5e-4, not 6e-8). The devices of
/// an in-process mesh do exactly that, so <see cref="Rt.Initialize"/> makes the first call itself. The race exists only
/// once per process, so each check is a fresh child process (this assembly's <see cref="FirstCalls"/>): eight threads
/// make the first vector-math calls after <see cref="Rt.Initialize"/>, and each result must be accurate.
/// <para>
/// A weak detector, honestly: with the warm-up removed, 2 of 40 children hit the race on this 2-core machine when it
/// was otherwise idle (0 of 40 while it was busy), so twenty children catch that regression about 1 - 0.95^20 = 64%
/// of the time. A correct runtime never fails it. The end-to-end guards are the mesh-vs-single-device loss tests.
/// </para>
/// </summary>
public sealed class VectorMathRaceTests
{
    [Fact]
    public async Task FirstVectorMathCallsOnManyThreadsAreAccurate()
    {
        for (int run = 0; run < 20; run++)
        {
            var (exit, stdout, stderr) = await ChildProcess.Run([FirstCalls.Command, "8"], $"run {run}: ");
            Assert.True(exit == 0, $"run {run}: exit {exit}\n{stdout}\n{stderr}");
        }
    }
}

/// <summary>The child process's side of <see cref="VectorMathRaceTests"/> and <see cref="HugePageTests"/> (the test
/// project's entry point).</summary>
public static class FirstCalls
{
    public const string Command = "first-vector-math-calls";

    public static int Main(string[] args)
    {
        if (args is [HugePageTests.Command]) return HugePageTests.Child();
        if (args.Length != 2 || args[0] != Command || !int.TryParse(args[1], out int n))
        {
            Console.Error.WriteLine($"usage: PaLM.Runtime.Tests {Command} THREADS (run the tests with 'dotnet test')");
            return 2;
        }
        TestUtil.Init();
        using var scope = Rt.Scope();
        var x = TestUtil.Randn(1, 4, 16, 256).mul(0.3);
        var exact = x.to_type(ScalarType.Float64);
        var ops = new (string Name, Func<Tensor, Tensor> F)[] { ("exp", t => t.exp()), ("tanh", t => t.tanh()) };
        var results = new Tensor[n, ops.Length];
        using var barrier = new Barrier(n);
        var threads = Enumerable.Range(0, n).Select(r => new Thread(() =>
        {
            set_num_threads(1);         // each caller is one of the mesh's device threads
            var xi = x.clone();
            barrier.SignalAndWait();    // all make the process's first vector-math calls together
            for (int o = 0; o < ops.Length; o++) results[r, o] = ops[o].F(xi);
        })).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();
        int bad = 0;
        for (int o = 0; o < ops.Length; o++)
        {
            var want = ops[o].F(exact);
            for (int r = 0; r < n; r++)
            {
                var err = (results[r, o].to_type(ScalarType.Float64) - want).abs().div(want.abs().clamp_min(1e-30)).max().item<double>();
                if (err > 1e-6) { bad++; Console.WriteLine($"thread {r}: {ops[o].Name} relative error {err:G3}"); }
            }
        }
        return bad == 0 ? 0 : 1;
    }
}
