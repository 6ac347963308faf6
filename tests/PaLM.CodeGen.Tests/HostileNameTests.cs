using System.Collections.Immutable;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.CodeGen.Tests;

/// <summary>
/// Names from the DSL or an IR file never reach generated C# unchecked: a graph whose every name is hostile
/// compiles, re-parses cleanly, contains only the members and calls code generation writes, and computes what the graph says.
/// </summary>
public sealed class HostileNameTests
{
    private const string Quote = "x\"); System.Environment.Exit(3); //";
    private const string Brace = "}} static void Evil() {{ System.Environment.Exit(4); }} static int y";
    private const string Zwsp = "a\u200Bb"; // a zero-width space: C# would strip it and collide with "ab"

    private static Graph HostileGraph()
    {
        var n = new Dim("n\"}", 2);
        var d = new Dim("@class", 3);
        var b = new GraphBuilder(new Dictionary<string, Dim> { [n.Name] = n, [d.Name] = d });
        var t = new TensorType(DType.F32, n, d);
        var loc = new SourceLoc("evil\nfile\u2028name.palm", 1, 1);
        var args = new List<GraphArg>();
        Value Param(string name)
        {
            var v = b.NewValue(name, t, loc: loc);
            args.Add(new GraphArg(v, ArgKind.Parameter, new Init(InitKind.Normal, 1)));
            return v;
        }
        var cls = Param("class");
        var quote = Param(Quote);
        var zwsp = Param(Zwsp);
        var ab = Param("ab");
        var rt = b.NewValue("Rt", t, loc: loc);
        args.Add(new GraphArg(rt, ArgKind.Input, null));
        var nodes = new List<Node>();
        var none = GraphBuilder.Attrs();
        var s1 = b.Apply(nodes, OpTable.Get("add"), new[] { cls, rt }, none, new[] { "parameters" }, loc)[0];
        var s2 = b.Apply(nodes, OpTable.Get("mul"), new[] { s1, zwsp }, none, new[] { Brace }, loc)[0];
        var s3 = b.Apply(nodes, OpTable.Get("sub"), new[] { s2, ab }, none, new[] { "x.1" }, loc)[0];
        var s4 = b.Apply(nodes, OpTable.Get("add"), new[] { s3, quote }, none, new[] { "x_1" }, loc)[0];
        var body = new Block(args.Select(a => a.Value).ToImmutableArray(), nodes.ToImmutableArray(), ImmutableArray.Create(s4));
        return new Graph("evil\"graph}{", ImmutableArray.Create(n, d), null, args.ToImmutableArray(), body,
            ImmutableArray.Create("out\n// injected"));
    }

    [Fact]
    public void HostileNamesCompileAndDoOnlyWhatTheGraphSays()
    {
        var source = Emitter.Emit(HostileGraph());

        // The text form re-parses without errors (a name smuggled into code would either break it or add members).
        var reparsed = CSharpSyntaxTree.ParseText(source.Text);
        Assert.Empty(reparsed.GetDiagnostics());
        var root = reparsed.GetRoot();
        // Methods: the program's three, plus the fused loops' kernels, whose names palmc makes up (LoopN).
        var methods = root.DescendantNodes().OfType<MethodDeclarationSyntax>().Select(m => m.Identifier.ValueText).ToList();
        Assert.Equal(new[] { "InitParameters", "Forward", "Main" }, methods.Take(3));
        Assert.All(methods.Skip(3), m => Assert.Matches("^Loop[0-9]+$", m));
        Assert.Single(root.DescendantNodes().OfType<ClassDeclarationSyntax>());
        var callees = root.DescendantNodes().OfType<InvocationExpressionSyntax>().Select(i => i.Expression.ToString()).Distinct().ToList();
        Assert.All(callees, c => Assert.True(c.StartsWith("Rt.", StringComparison.Ordinal) || c.StartsWith("Ew.", StringComparison.Ordinal) || c.StartsWith("Ev.", StringComparison.Ordinal)
            || c.StartsWith("c.", StringComparison.Ordinal) || c == "ProgramHost.Main", $"unexpected call {c}"));
        Assert.DoesNotContain("Environment", source.Text.Split('\n').Where(l => !l.TrimStart().StartsWith("//", StringComparison.Ordinal)));

        var program = RoslynCompiler.CompileInMemory(source);
        Assert.Equal("evil\"graph}{", program.Name);
        Assert.Equal(new[] { "class", Quote, Zwsp, "ab" }, program.Parameters.Select(p => p.Name));
        Assert.Equal("out\n// injected", program.Outputs[0].Name);

        Rt.Initialize();
        using var scope = NewDisposeScope();
        var ps = Enumerable.Range(0, 4).Select(i => rand(2, 3) + i).ToArray();
        var input = rand(2, 3);
        var result = program.Forward(ps, new[] { input })[0];
        var expected = (ps[0] + input) * ps[2] - ps[3] + ps[1];
        Assert.True(result.allclose(expected, rtol: 1e-6, atol: 1e-6));
    }

    [Fact]
    public void UserNamesLikeTheArrayConstantsDoNotCollideWithThem()
    {
        // The runtime calls' integer arrays are static fields named after their values (L_0_1 for the axes [0, 1], I_0
        // for a loop's donors [0]); values named so get other identifiers, whichever is named first.
        var graph = PaLM.Dsl.Frontend.CompileText("arrays.palm", """
            dim b = 2, d = 3
            input L_0_1: f32[b, d]
            I_0 = exp(L_0_1)
            L_0_1_1 = I_0 * L_0_1
            m = mean(L_0_1_1, over=[b, d])
            output m
            """);
        var source = Emitter.Emit(graph);
        var root = CSharpSyntaxTree.ParseText(source.Text).GetRoot();
        var fields = root.DescendantNodes().OfType<FieldDeclarationSyntax>().SelectMany(f => f.Declaration.Variables).Select(v => v.Identifier.ValueText).ToList();
        Assert.Contains(fields, f => f.StartsWith("L_0_1", StringComparison.Ordinal));
        var forward = root.DescendantNodes().OfType<MethodDeclarationSyntax>().Single(m => m.Identifier.ValueText == "Forward");
        Assert.DoesNotContain("new long[]", forward.ToString());
        var locals = forward.DescendantNodes().OfType<VariableDeclaratorSyntax>().Select(v => v.Identifier.ValueText);
        Assert.Empty(locals.Intersect(fields));

        var program = RoslynCompiler.CompileInMemory(source);
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var x = rand(2, 3);
        for (int run = 0; run < 2; run++)     // the shared arrays are only read: a second call computes the same
            Assert.True(program.Forward([], [x])[0].allclose((x.exp() * x).mean(), rtol: 1e-6, atol: 1e-6));
    }

    [Theory]
    [InlineData("x", "x")]
    [InlineData("x.1", "x_1")]
    [InlineData("9lives", "_9lives")]
    [InlineData("a\u200Bb", "a_b")]
    [InlineData("\"; }", "____")]
    [InlineData("", "_")]
    public void SanitizeKeepsOnlyAsciiIdentifierCharacters(string name, string expected) =>
        Assert.Equal(expected, CSharpNames.Sanitize(name));

    [Fact]
    public void CollisionsAndReservedNamesGetSuffixes()
    {
        var names = new CSharpNames();
        Assert.Equal("x_1", names.Fresh("x_1"));
        Assert.Equal("x_1_1", names.Fresh("x.1"));
        Assert.Equal("Rt_1", names.Fresh("Rt"));
        Assert.Equal("@class", CSharpNames.Token(names.Fresh("class")).Text);
    }
}
