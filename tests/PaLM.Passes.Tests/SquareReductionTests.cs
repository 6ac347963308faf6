using PaLM.Dsl;
using PaLM.IR;

namespace PaLM.Passes.Tests;

/// <summary>
/// The square-reduction pass: the optimizer's sums and means of squares become one op each (no squared temporary),
/// a square read by anything else stays. The fused program's values are checked by DonationTests and
/// EagerTrainerTests (training steps against the eager peer), the ops' own rules by OpVjpTests.
/// </summary>
public sealed class SquareReductionTests
{
    private static IEnumerable<Node> Nodes(Block b) => b.Nodes.SelectMany(n => n.Regions.SelectMany(Nodes).Prepend(n));

    [Theory]
    [InlineData("data=1,model=1")]
    [InlineData("data=2,model=2")]
    public void TheOptimizersSquaresAreNotMaterialized(string mesh)
    {
        var g = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var compiled = TrainingCompiler.Compile(g, Mesh.Parse(mesh), new TrainingConfig());
        var nodes = Nodes(compiled.Local.Body).ToList();
        var producer = nodes.SelectMany(n => n.Outputs.Select(o => (o, n))).ToDictionary(p => p.o, p => p.n);
        Assert.DoesNotContain(nodes, n => n.Op.Name is "sum" or "mean" && producer.TryGetValue(n.Inputs[0], out var p) && p.Op.Name == "square");
        // Global norm: one sum of squares per parameter; Adafactor: the RMS of each update and each parameter.
        var parameters = compiled.Local.Parameters.Count();
        Assert.Equal(parameters, nodes.Count(n => n.Op.Name == "sum_squares"));
        Assert.True(nodes.Count(n => n.Op.Name == "mean_squares") >= parameters);
    }

    [Fact]
    public void ASquareReadTwiceStays()
    {
        var g = Frontend.CompileText("sq.palm", "dim a = 3, b = 4\ninput x: f32[a, b]\ns = square(x)\nt = sum(s, over=[b])\nu = s * 2\noutput t\noutput u\n");
        var (fused, count) = SquareReductions.Run(g);
        Assert.Equal(0, count);
        var g2 = Frontend.CompileText("sq.palm", "dim a = 3, b = 4\ninput x: f32[a, b]\nt = mean(square(x), over=[a, b])\noutput t\n");
        var (fused2, count2) = SquareReductions.Run(g2);
        Assert.Equal(1, count2);
        Assert.Equal(["mean_squares"], fused2.Body.Nodes.Select(n => n.Op.Name));
    }
}
