using PaLM.CodeGen;
using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using PaLM.Runtime.Training;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>
/// Weights a fused projection joins, kept side by side (<see cref="ParameterGroups"/>): which are grouped, that a step
/// computes the same losses and updates with and without the groups, and that a donated step keeps them side by side
/// (its joins stay views of the weights step after step).
/// </summary>
public sealed class ParameterGroupsTests
{
    private static readonly string[] s_members = ["w_q", "w_k", "w_v", "w_o", "w_gate", "w_up", "w_down"];
    private static readonly Lazy<Graph> s_tiny = new(() => Frontend.CompileFile(TestPaths.Graph("palm-tiny")));

    private static string[] Names(Graph g, ParameterGroups.Group group)
    {
        var persistent = g.Persistent.ToList();
        return [.. group.Members.Select(m => persistent[m].Value.Name)];
    }

    [Theory]
    [InlineData("data=1,model=1", "w_q,w_k,w_v,w_gate,w_up/2/0; w_o,w_down/1/1")]
    // w_k and w_v keep d_model split over model (FusionTests): their projections fuse, and their shards group, apart.
    [InlineData("data=1,model=2", "w_q,w_gate,w_up/2/0; w_k,w_v/2/0; w_o,w_down/1/1")]
    // Weights gathered over data before each use: the joins read the gathered copies, and nothing is grouped.
    [InlineData("data=2,model=2", "")]
    public void TheFusedProjectionsWeightsAreGrouped(string mesh, string expected)
    {
        // [layers, d_model, own...] joined along own (lead 2), [layers, own..., d_model] along own (lead 1, trail 1).
        var local = TrainingCompiler.Compile(s_tiny.Value, Mesh.Parse(mesh), new TrainingConfig()).Local;
        var groups = ParameterGroups.Of(local).Groups;
        Assert.Equal(expected, string.Join("; ", groups.Select(gr => $"{string.Join(",", Names(local, gr))}/{gr.Lead}/{gr.Trail}")));
        // Optimizer state is never grouped, and unfused steps have nothing to group.
        Assert.Empty(ParameterGroups.Of(TrainingCompiler.Compile(s_tiny.Value, Mesh.Parse(mesh), new TrainingConfig { Fuse = false }).Local).Groups);
    }

    [Fact]
    public void GroupedStepsMatchUngroupedOnesAndStayGrouped()
    {
        Rt.Initialize();
        var local = TrainingCompiler.Compile(s_tiny.Value, null, new TrainingConfig()).Local;
        var grouped = RoslynCompiler.CompileInMemory(Emitter.Emit(local, options: new CodeGenOptions { DonateUpdatedArguments = true }));
        var plain = RoslynCompiler.CompileInMemory(Emitter.Emit(local, options: new CodeGenOptions { DonateUpdatedArguments = true, GroupParameters = false }));
        Assert.Contains("Rt.GroupSideBySide", Emitter.Emit(local).Text);
        Assert.DoesNotContain("Rt.GroupSideBySide", Emitter.Emit(local, options: new CodeGenOptions { GroupParameters = false }).Text);
        using var scope = NewDisposeScope();
        var a = grouped.InitParameters(seed: 4);
        var b = plain.InitParameters(seed: 4);
        for (int p = 0; p < a.Length; p++) Assert.True(a[p].eq(b[p]).all().item<bool>(), $"{grouped.Parameters[p].Name} drawn differently");
        int Index(string name) => grouped.Parameters.Select(s => s.Name).ToList().IndexOf(name);
        var corpus = ByteCorpus.Default();
        for (long step = 1; step <= 3; step++)
        {
            var outA = grouped.Forward(a, StepInputs.For(grouped, corpus, 6, step));
            var outB = plain.Forward(b, StepInputs.For(plain, corpus, 6, step));
            for (int i = 0; i < outA.Length; i++)
            {
                        // The same values to float rounding: the per-weight sums of squares read grouped rows in other blocks.
                // Measured: at most 6e-5 of a tensor's largest entry (embed.m at step 2), most under 1e-7.
                var scale = outB[i].abs().max().item<float>();
                var diff = (outA[i] - outB[i]).abs().max().item<float>();
                Assert.True(diff <= 5e-4 * scale + 1e-6, $"step {step}: output {grouped.Outputs[i].Name} differs by {diff} (largest entry {scale})");
                if (grouped.Outputs[i].Updates is var u and >= 0)
                {
                    // The grouped weights are updated where they lie (written as destinations: they are strided views).
                    if (s_members.Contains(grouped.Parameters[u].Name)) Assert.Same(a[u], outA[i]);
                    (a[u], b[u]) = (outA[i], outB[i]);
                }
            }
            // Layer 0's forward join of the grouped weights is still a view of them: a change to w_k shows in it.
            Tensor[] pieces = [.. new[] { "w_q", "w_k", "w_v", "w_gate", "w_up" }.Select(n => a[Index(n)][0].reshape(a[Index(n)].shape[1], -1))];
            using var joined = Rt.Concat(pieces, 1);
            var before = joined.clone();
            var kept = a[Index("w_k")].clone();
            a[Index("w_k")].add_(1);
            Assert.False(joined.eq(before).all().item<bool>(), $"step {step}: the weights are no longer side by side");
            a[Index("w_k")].copy_(kept);
        }
    }

    [Fact]
    public void RestoredWeightsAreArrangedAgain()
    {
        // What the trainer does with a checkpoint's tensors (each a buffer of its own): ArrangeParameters groups them.
        Rt.Initialize();
        var local = TrainingCompiler.Compile(s_tiny.Value, null, new TrainingConfig()).Local;
        var program = RoslynCompiler.CompileInMemory(Emitter.Emit(local));
        using var scope = NewDisposeScope();
        var restored = program.InitParameters(seed: 2).Select(t => t.clone()).ToArray();
        var values = restored.Select(t => t.clone()).ToArray();
        int Index(string name) => program.Parameters.Select(s => s.Name).ToList().IndexOf(name);
        Tensor Join() => Rt.Concat([.. new[] { "w_o", "w_down" }.Select(n => restored[Index(n)][1].reshape(-1, restored[Index(n)].shape[^1]))], 0);
        // Before: the join is a copy, which a change to w_down leaves as it was.
        var copy = Join();
        var snapshot = copy.clone();
        var kept = restored[Index("w_down")].clone();
        restored[Index("w_down")].add_(1);
        Assert.True(copy.eq(snapshot).all().item<bool>());
        restored[Index("w_down")].copy_(kept);
        program.ArrangeParameters(restored);
        for (int p = 0; p < restored.Length; p++) Assert.True(restored[p].eq(values[p]).all().item<bool>(), $"{program.Parameters[p].Name} changed");
        var joined = Join();
        var before = joined.clone();
        restored[Index("w_down")].add_(1);
        Assert.False(joined.eq(before).all().item<bool>(), "the restored weights are not side by side");
    }
}
