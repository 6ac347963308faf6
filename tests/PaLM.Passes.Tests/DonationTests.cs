using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using PaLM.Runtime.Training;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>
/// Donated arguments (JAX's donate_argnums): a training step compiled with <see cref="CodeGenOptions.DonateUpdatedArguments"/>
/// writes the new parameters and optimizer state into the old tensors, and computes bit-identical results to one
/// compiled without it, step after step.
/// </summary>
public sealed class DonationTests
{
    private static readonly Lazy<Graph> s_tiny = new(() => Frontend.CompileFile(TestPaths.Graph("palm-tiny")));

    [Fact]
    public void TheUpdatesOfLayerWeightsAndTheirStateRunInPlace()
    {
        var compiled = TrainingCompiler.Compile(s_tiny.Value, null, new TrainingConfig());
        var local = compiled.Local;
        var args = local.Args.Select(a => a.Value).ToHashSet(ReferenceEqualityComparer.Instance);
        string[] Donated(bool on) => [.. BufferReuse.Plan(local, on).Where(kv => args.Contains(kv.Key.Inputs[kv.Value]))
            .Select(kv => kv.Key.Inputs[kv.Value].Name).Order(StringComparer.Ordinal)];
        Assert.Empty(Donated(false));
        var donated = Donated(true);
        foreach (var w in new[] { "w_q", "w_k", "w_v", "w_o", "w_gate", "w_up", "w_down" })
            Assert.Contains(w, donated);
        // Optimizer state is donated too (m and v of each weight).
        Assert.True(donated.Length > 14, string.Join(", ", donated));
        // Only parameters and state a step replaces: never the batch.
        Assert.DoesNotContain("tokens", donated);
    }

    [Fact]
    public void GradientsAddIntoTheFreshResultsOfLayerNormAndCrossEntropyGradients()
    {
        // layernorm_dx and cross_entropy_grad return new buffers (OpDef.FreshBuffer): the residual stream's cotangent
        // adds into the former, the logits' scale multiplies the latter, instead of each allocating a third buffer.
        // palm-cpu: its logits' scale, 1/√768, is not a power of two, so ScaleHoisting leaves the multiply in place.
        var local = TrainingCompiler.Compile(Frontend.CompileFile(TestPaths.Graph("palm-cpu")), null, new TrainingConfig()).Local;
        var plan = BufferReuse.Plan(local);
        var producer = local.Body.AllNodes().SelectMany(n => n.Outputs.Select(o => (o, n))).ToDictionary(p => p.o, p => p.n);
        var into = plan.Select(kv => (Op: kv.Key.Op.Name, Donor: producer.GetValueOrDefault(kv.Key.Inputs[kv.Value])?.Op.Name)).ToList();
        Assert.Contains(("add", "layernorm_dx"), into);
        Assert.Contains(("mul", "cross_entropy_grad"), into);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void DonatedStepsComputeTheSameBits(bool fuse)
    {
        Rt.Initialize();
        var compiled = TrainingCompiler.Compile(s_tiny.Value, null, new TrainingConfig { Fuse = fuse, Remat = RematPolicy.Full });
        // Without parameter groups on either side: a step that returns new weights does not keep them side by side,
        // and the per-weight sums of squares then read them in other blocks (ParameterGroupsTests compares the two).
        var plain = RoslynCompiler.CompileInMemory(Emitter.Emit(compiled.Local, options: new CodeGenOptions { GroupParameters = false }));
        var donating = RoslynCompiler.CompileInMemory(Emitter.Emit(compiled.Local, options: new CodeGenOptions { DonateUpdatedArguments = true, GroupParameters = false }));
        using var scope = NewDisposeScope();
        var a = plain.InitParameters(seed: 3);
        var b = donating.InitParameters(seed: 3);
        var corpus = ByteCorpus.Default();
        int inPlace = 0;
        for (long step = 1; step <= 3; step++)
        {
            var inputs = StepInputs.For(plain, corpus, seed: 5, step);
            var outA = plain.Forward(a, inputs);
            var outB = donating.Forward(b, inputs);
            // A result may be an old tensor only where it replaces that very tensor: the trainer frees an old tensor
            // when its successor is another object, so any other reuse would free a live result.
            for (int i = 0; i < outB.Length; i++)
                for (int p = 0; p < b.Length; p++)
                    if (ReferenceEquals(outB[i], b[p]))
                        Assert.True(donating.Outputs[i].Updates == p, $"step {step}: output {donating.Outputs[i].Name} was written into {donating.Parameters[p].Name}");
            for (int i = 0; i < outA.Length; i++)
            {
                Assert.True(outA[i].eq(outB[i]).all().item<bool>(), $"step {step}: output {plain.Outputs[i].Name} differs");
                if (plain.Outputs[i].Updates is var u and >= 0)
                {
                    Assert.False(ReferenceEquals(a[u], outA[i]));   // without donation every update is a new tensor
                    if (ReferenceEquals(b[u], outB[i])) inPlace++;
                    a[u] = outA[i];
                    b[u] = outB[i];
                }
            }
        }
        Assert.True(inPlace > 0, "no update ran in place");
    }
}
