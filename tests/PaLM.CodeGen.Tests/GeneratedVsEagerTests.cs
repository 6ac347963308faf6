using System.Globalization;
using PaLM.Dsl;
using PaLM.Reference;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.CodeGen.Tests;

/// <summary>The generated forward loss equals the hand-written eager TorchSharp PaLM's on identical weights and batch.</summary>
public sealed class GeneratedVsEagerTests
{
    private static (double Generated, double Reference) Losses(IGraphProgram program, long seed)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var parameters = program.InitParameters(seed);
        var spec = program.Inputs.First(i => i.Name == "tokens");
        var config = ReferenceRunner.ConfigFrom(program) ?? throw new InvalidOperationException("not a PaLM program");
        var (tokens, targets) = Batches.Random(seed + 1, spec.Shape[0], spec.Shape[1], config.Vocab);
        var generated = program.Forward(parameters, new[] { tokens, targets })[0].to_type(ScalarType.Float64).item<double>();
        return (generated, ReferenceRunner.Loss(program, config, seed));
    }

    [Fact]
    public void PalmTinyMatchesTheEagerReference()
    {
        var program = RoslynCompiler.CompileInMemory(Emitter.Emit(Frontend.CompileFile(TestPaths.Graph("palm-tiny"))));
        foreach (var seed in new long[] { 0, 7 })
        {
            var (g, r) = Losses(program, seed);
            Assert.True(Math.Abs(g - r) <= 1e-5 * Math.Abs(r), $"seed {seed}: generated {g} vs reference {r}");
        }
    }

    public static TheoryData<int> RandomConfigs => new() { 1, 2, 3, 4 };

    [Theory]
    [MemberData(nameof(RandomConfigs))]
    public void RandomSmallConfigurationsMatchTheEagerReference(int configSeed)
    {
        var rng = new Random(configSeed);
        int layers = rng.Next(1, 4), heads = rng.Next(1, 5), headDim = 2 * rng.Next(2, 9), dModel = 8 * rng.Next(2, 9);
        int dff = 4 * dModel, vocab = rng.Next(17, 300), seq = rng.Next(3, 20), batch = rng.Next(1, 4);
        var text = string.Create(CultureInfo.InvariantCulture,
            $"dim layers = {layers}, heads = {heads}, head_dim = {headDim}, d_model = {dModel}, d_ff = {dff}\n" +
            $"dim vocab = {vocab}, seq = {seq}, batch = {batch}\nmesh pod = 1, data = 1, model = 1\ninclude \"arch/palm.palm\"\n");
        var graph = Frontend.CompileText(TestPaths.Graph($"random-{configSeed}"), text);
        var program = RoslynCompiler.CompileInMemory(Emitter.Emit(graph));
        var (g, r) = Losses(program, configSeed);
        Assert.True(Math.Abs(g - r) <= 1e-5 * Math.Abs(r),
            $"config {configSeed} (L={layers} H={heads} K={headDim} D={dModel} V={vocab} S={seq} B={batch}): generated {g} vs reference {r}");
    }
}
