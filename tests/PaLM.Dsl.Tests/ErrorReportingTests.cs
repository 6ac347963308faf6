using PaLM.IR;

namespace PaLM.Dsl.Tests;

/// <summary>
/// The error-reporting contract of the front end: every error is <c>FILE:LINE:COL: error: MESSAGE</c> with the source
/// line and a caret, independent errors are all reported, and a bad file never raises anything but
/// <see cref="DslException"/>.
/// </summary>
public class ErrorReportingTests
{
    private const string File = "case.palm";

    /// <summary>Lines 1-2 of every case; the case's text starts on line 3 and <c>output x</c> follows it.</summary>
    private const string Prelude = "dim b = 2, s = 4, d = 8, layers = 3\ninput x: f32[b, s, d]\n";

    private static string Text(string body) => Prelude + body + "\noutput x\n";

    /// <summary>(id, text from line 3, expected line, column, message substring, expected number of errors).</summary>
    public static TheoryData<string, string, int, int, string, int> Cases => new()
    {
        // ---- syntax ----------------------------------------------------------------------------------------------
        { "missing ')'", "y = softmax(x, over=d", 3, 22, "unexpected end of line; expected", 1 },
        { "missing ']' in a type", "input y: f32[b, s", 3, 18, "unexpected end of line; expected", 1 },
        { "bad token", "y = x $ x", 3, 7, "unexpected '$'", 1 },
        { "bad token after '@'", "y = x @ x", 3, 9, "expected 'shard'", 1 },
        { "missing ':' in param", "param w f32[d] = ones", 3, 9, "expected ':'", 1 },
        { "bad number (two points)", "dim n = 1.5.2", 3, 12, "unexpected '.2'", 1 },
        { "bad number (empty exponent)", "dim n = 1e", 3, 10, "unexpected 'e'", 1 },
        { "unclosed repeat '{'", "h = x * 2\nrepeat layers {\n  h = h * 2", 4, 1, "'repeat' block is not closed", 1 },
        { "stray '}'", "}", 3, 1, "'}' without a matching 'repeat", 1 },
        { "keyword as a name", "input repeat: f32[b]", 3, 7, "syntax error", 1 },

        // ---- names, dims and dtypes --------------------------------------------------------------------------------
        { "unknown name, did you mean", "y = softmax(xs, over=d)", 3, 13, "unknown name 'xs' (did you mean 'x'?)", 1 },
        { "undefined dim in a type", "input y: f32[b, q]", 3, 17, "undefined dim 'q'", 1 },
        { "undefined dim, did you mean", "input y: f32[b, layer]", 3, 17, "did you mean 'layers'?", 1 },
        { "unknown dtype", "input y: f16[b]", 3, 10, "unknown dtype 'f16'", 1 },
        { "duplicate dim", "dim b = 3", 3, 5, "dim 'b' is already declared at case.palm:1:5", 1 },
        { "dim twice in one type", "input y: f32[b, b]", 3, 17, "dim 'b' appears twice in one type", 1 },
        { "dim defined in terms of itself", "dim a = a + 1", 3, 5, "dim 'a' is defined in terms of itself", 1 },
        { "dims defined in terms of each other", "dim a = c, c = a", 3, 5, "defined in terms of itself", 2 },
        { "non-integer dim size", "dim a = 2.5", 3, 9, "dim size must be an integer, got 2.5", 1 },
        { "negative dim size", "dim a = -3", 3, 9, "dim 'a' must have a positive size, got -3", 1 },
        { "zero dim size", "dim a = 2 - 2", 3, 11, "must have a positive size, got 0", 1 },
        { "NaN dim size", "dim a = 0 / 0", 3, 11, "dim size must be an integer, got NaN", 1 },
        { "dim size beyond 64 bits", "dim a = 1e30", 3, 9, "too large", 1 },
        { "tensor beyond 2^63 elements", "dim e1 = 1e7, e2 = 1e7, e3 = 1e7\ninput z: f32[e1, e2, e3]", 4, 10, "f32[e1, e2, e3] has more than 2^63 elements", 1 },
        { "unknown dim in a dim size", "dim a = 2 * bb", 3, 13, "unknown dim 'bb' (did you mean 'b'?)", 1 },
        { "value named like a dim", "d = x * 2", 3, 1, "'d' is already a dim", 1 },
        { "value named like a dtype", "f32 = x * 2", 3, 1, "'f32' is a dtype", 1 },

        // ---- einsum -------------------------------------------------------------------------------------------------
        { "einsum shape mismatch (size)", "dim e = 3\nparam w: f32[e, d] = ones\ny = einsum(x[b, s, d], w[d, e] -> [b, s, e])", 5, 5, "shape mismatch", 1 },
        { "einsum rank mismatch", "y = einsum(x[b, s], x[b, s, d] -> [b, s])", 3, 5, "has rank 3 but 2 subscripts", 1 },
        { "einsum output label in no input", "y = einsum(x[b, s, d] -> [b, layers])", 3, 5, "'layers' appears in no operand", 1 },
        { "einsum subscript not a dim", "y = einsum(x[b, s, dd] -> [b, s])", 3, 20, "subscript 'dd' is not a declared dim (did you mean 'd'?)", 1 },
        { "einsum without subscripts", "y = einsum(x, x)", 3, 5, "'einsum' needs subscripts", 1 },
        { "einsum with an attribute it lacks after the arrow", "y = einsum(x[b, s, d] -> [b, s], blocks=2)", 3, 34, "'einsum' has no attribute 'blocks'", 1 },
        { "positional operand after the arrow", "y = einsum(x[b, s, d] -> [b, s], x)", 3, 35, "unexpected ')'; expected '='", 1 },
        { "subscripts on a non-einsum op", "y = softmax(x[b, s, d], over=d)", 3, 15, "'softmax' does not take subscripts", 1 },
        { "arrow on a non-einsum op", "y = softmax(x, over=d -> [b])", 3, 27, "'softmax' does not take '->'", 1 },

        // ---- calls ------------------------------------------------------------------------------------------------
        { "softmax with 2 operands", "y = softmax(x, x, over=d)", 3, 5, "'softmax' takes 1 operand, got 2", 1 },
        { "unknown function, did you mean", "y = sofmax(x, over=d)", 3, 5, "unknown function 'sofmax' (did you mean 'softmax'?)", 1 },
        { "repeat used as a function", "y = repeat(x)", 3, 5, "syntax error", 1 },
        { "unknown attribute", "y = softmax(x, over=d, axis=d)", 3, 24, "'softmax' has no attribute 'axis'; it takes: over", 1 },
        { "missing required attribute", "y = softmax(x)", 3, 5, "'softmax' needs attribute 'over='", 1 },
        { "attribute of the wrong kind (over=1.5)", "y = softmax(x, over=1.5)", 3, 21, "'over=' expects a dim", 1 },
        { "dtype attribute misspelt", "y = cast(x, to=f16)", 3, 16, "'to=' expects f32, f64, bf16 or i32", 1 },
        { "attribute given twice", "y = softmax(x, over=d, over=s)", 3, 24, "attribute 'over' given twice", 1 },
        { "operand after an attribute", "y = softmax(over=d, x)", 3, 21, "operands must come before named attributes", 1 },
        { "dim named twice in a reduction", "y = sum(x, over=[d, d])", 3, 5, "sum: dim 'd' named twice", 1 },
        { "reduction over a dim the operand lacks", "y = sum(x, over=[layers])", 3, 5, "'layers' is not a dim of f32[b, s, d]", 1 },
        { "layernorm over a non-last dim", "param g: f32[s] = ones\ny = layernorm(x, g, over=s)", 4, 5, "'over' must be the last dim", 1 },
        { "dtype mismatch in add (i32 + f32)", "input t: i32[b, s, d]\ny = t + x", 4, 7, "add: operand dtypes differ: i32[b, s, d] and f32[b, s, d]", 1 },
        { "float op on integers", "input t: i32[b, s]\ny = exp(t)", 4, 5, "exp: operand 1 must be floating point", 1 },
        { "concat along a dim the operand lacks", "dim q = 3, r = 6\ny = concat(x, x, along=[q, q], as=r)", 4, 5, "concat", 1 },
        { "split to 1 name", "dim d1 = 4, d2 = 4\ny = split(x, along=d, into=[d1, d2])", 4, 5, "'split' produces 2 values; assign them to 2 names", 1 },
        { "1 value to 2 names", "y, z = softmax(x, over=d)", 3, 8, "'softmax' produces 1 value, assigned to 2 names", 1 },
        { "constant expression as a value", "y = 2 * 3", 3, 7, "a constant expression does not make a value", 1 },

        // ---- annotations -------------------------------------------------------------------------------------------
        { "unknown mesh axis", "mesh data = 2, model = 2\ninput y: f32[b, d] @shard(b: dta)", 4, 30, "mesh has no axis 'dta' (axes: data, model) (did you mean 'data'?)", 1 },
        { "mesh axis twice in one tensor", "mesh data = 2, model = 2\ninput y: f32[b, d] @shard(b: data, d: data)", 4, 39, "mesh axis 'data' is used twice", 1 },
        { "annotating a dim the tensor lacks", "mesh data = 2, model = 2\ninput y: f32[b, d] @shard(s: data)", 4, 27, "'s' is not a dim of 'y': f32[b, d]", 1 },
        { "annotation without a mesh", "input y: f32[b, d] @shard(b: data)", 3, 20, "no mesh is declared", 1 },
        { "dim annotated twice", "mesh data = 2, model = 2\ninput y: f32[b, d] @shard(b: data, b: model)", 4, 36, "dim 'b' of 'y' is annotated twice", 1 },
        { "annotation on a result lacking the dim", "mesh data = 2, model = 2\ny = sum(x, over=[b]) @shard(b: data)", 4, 29, "'b' is not a dim of 'y'", 1 },
        { "mesh declared twice", "mesh data = 2\nmesh model = 2", 4, 1, "the mesh is declared twice", 1 },
        { "mesh axis declared twice", "mesh data = 2, data = 4", 3, 16, "mesh axis 'data' is declared twice", 1 },

        // ---- arguments ----------------------------------------------------------------------------------------------
        { "parameter without initializer", "param w: f32[d]", 3, 7, "parameter 'w' needs an initializer", 1 },
        { "unknown initializer", "param w: f32[d] = uniform(1)", 3, 19, "unknown initializer 'uniform(...)'", 1 },
        { "normal with a non-positive std", "param w: f32[d] = normal(0)", 3, 26, "normal(std) needs a positive std", 1 },
        { "input with initializer", "input y: f32[d] = ones", 3, 19, "input 'y' cannot have an initializer", 1 },
        { "input declared twice", "input x: f32[b]", 3, 7, "'x' is already declared as an input at case.palm:2:7", 1 },
        { "assigning to a parameter", "param w: f32[d] = ones\nw = x", 4, 1, "'w' is already declared as a parameter at case.palm:3:7", 1 },
        { "assigning to an input", "x = x * 2", 3, 1, "'x' is already declared as an input", 1 },
        { "output of an unknown name", "output q", 3, 8, "unknown name 'q'", 1 },
        { "output twice", "output x", 4, 8, "'x' is already an output", 1 },

        // ---- repeat -------------------------------------------------------------------------------------------------
        { "input inside repeat", "h = x * 2\nrepeat layers {\n  input z: f32[d]\n  h = h * 2\n}", 5, 3, "'input' belongs at the top level", 1 },
        { "output inside repeat", "h = x * 2\nrepeat layers {\n  output h\n  h = h * 2\n}", 5, 3, "'output' belongs at the top level", 1 },
        { "dim inside repeat", "h = x * 2\nrepeat layers {\n  dim e = 2\n  h = h * 2\n}", 5, 3, "'dim' declarations belong at the top level", 1 },
        { "repeat over an undeclared dim", "h = x * 2\nrepeat layer {\n  h = h * 2\n}", 4, 8, "repeat count 'layer' must be a declared dim (did you mean 'layers'?)", 1 },
        { "repeat body that carries nothing", "repeat layers {\n  z = x * 2\n}", 3, 1, "the repeat body assigns no name defined before it", 1 },
        { "a name changing type through repeat", "h = x * 2\nrepeat layers {\n  h = sum(h, over=[d])\n}", 4, 1, "'h' changes type in the repeat body from f32[b, s, d] to f32[b, s]", 1 },
        { "error inside a repeat body", "h = x * 2\nrepeat layers {\n  h = h + q\n}", 5, 11, "unknown name 'q'", 1 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Reports_the_error_at_its_location(string id, string body, int line, int col, string message, int count)
    {
        var e = CompileFails(Text(body));
        var all = e.FormatAll();
        Assert.True(e.Diagnostics.Count == count, $"{id}: expected {count} error(s), got {e.Diagnostics.Count}:\n{all}");
        var first = e.Diagnostics[0];
        Assert.True(first.Loc.File == File && first.Loc.Line == line && first.Loc.Column == col && first.Message.Contains(message, StringComparison.Ordinal),
            $"{id}: expected {File}:{line}:{col}: ...{message}..., got:\n{all}");
        // The formatted form is FILE:LINE:COL: error: MESSAGE, then the source line and a caret under the column.
        var formatted = first.Format(f => f == File ? Text(body) : null).Split('\n');
        Assert.Equal($"{File}:{line}:{col}: error: {first.Message}", formatted[0]);
        Assert.Equal(3, formatted.Length);
        Assert.Equal(Text(body).Split('\n')[line - 1], formatted[1]);
        Assert.Equal(new string(' ', col - 1) + "^", formatted[2]);
    }

    [Fact]
    public void The_table_has_at_least_30_distinct_cases()
    {
        var ids = Cases.Select(c => (string)c[0]).ToList();
        Assert.True(ids.Count >= 30);
        Assert.Equal(ids.Count, ids.Distinct().Count());
        Assert.Equal(ids.Count, Cases.Select(c => (string)c[1]).Distinct().Count());
    }

    [Fact]
    public void The_prelude_alone_compiles()
    {
        // The prelude and the wrapper are valid on their own, so each case's error comes from its own text.
        var g = Frontend.CompileText(File, Text(""));
        Assert.Equal("x", Assert.Single(g.OutputNames));
    }

    // ---- several errors -------------------------------------------------------------------------------------------

    [Fact]
    public void Three_independent_errors_are_all_reported_in_line_order()
    {
        var text = string.Join("\n",
            "dim b = 2, s = 4, d = 8",
            "input x: f32[b, s, d]",
            "w = sofmax(x, over=d)",              // 3: unknown function
            "input t: i32[b, q]",                 // 4: undefined dim
            "y = x + 1",
            "z = sum(y, over=[d, d])",            // 6: dim named twice
            "output y");
        var e = CompileFails(text);
        Assert.Equal(new[] { (3, 5), (4, 17), (6, 5) }, e.Diagnostics.Select(d => (d.Loc.Line, d.Loc.Column)).ToArray());
        Assert.Contains("unknown function 'sofmax'", e.Diagnostics[0].Message);
        Assert.Contains("undefined dim 'q'", e.Diagnostics[1].Message);
        Assert.Contains("named twice", e.Diagnostics[2].Message);
        var lines = e.FormatAll().Split('\n');
        Assert.Equal(9, lines.Length); // three errors, three lines each
        Assert.StartsWith("case.palm:3:5: error: ", lines[0]);
        Assert.StartsWith("case.palm:4:17: error: ", lines[3]);
        Assert.StartsWith("case.palm:6:5: error: ", lines[6]);
    }

    [Fact]
    public void Syntax_errors_on_several_lines_are_all_reported()
    {
        var text = string.Join("\n",
            "dim b = 2, d = 8",
            "input x: f32[b, d]",
            "y = x $ 2",                   // 3
            "param w f32[d] = ones",       // 4
            "z = softmax(x, over=d",       // 5: unclosed '(' ends at the line before a keyword
            "output x");
        var e = CompileFails(text);
        Assert.Equal(new[] { 3, 4, 5 }, e.Diagnostics.Select(d => d.Loc.Line).ToArray());
        Assert.All(e.Diagnostics, d => Assert.StartsWith("syntax error", d.Message));
    }

    [Fact]
    public void Binding_errors_before_a_syntax_error_are_kept()
    {
        var text = string.Join("\n",
            "dim b = 2, d = 8",
            "input x: f32[b, d]",
            "y = softmax(x, over=q)",       // 3: not a declared dim
            "z = exp(q)",                   // 4: unknown name
            "w = x $ 2",                    // 5: syntax
            "output x");
        var e = CompileFails(text);
        Assert.Equal(new[] { (3, 21), (4, 9), (5, 7) }, e.Diagnostics.Select(d => (d.Loc.Line, d.Loc.Column)).ToArray());
    }

    [Fact]
    public void A_syntax_error_in_the_output_line_is_not_reported_as_a_missing_output()
    {
        var e = CompileFails("dim b = 2\ninput x: f32[b]\noutput x,\n");
        var d = Assert.Single(e.Diagnostics);
        Assert.Equal(3, d.Loc.Line);
        Assert.StartsWith("syntax error", d.Message);
    }

    [Fact]
    public void A_file_without_output_reports_it_in_that_file()
    {
        var e = CompileFails("dim b = 2\ninput x: f32[b]\n");
        var d = Assert.Single(e.Diagnostics);
        Assert.Equal(new SourceLoc(File, 1, 1), d.Loc);
        Assert.Contains("no 'output' statement", d.Message);

        var empty = CompileFails("");
        Assert.Equal(File, Assert.Single(empty.Diagnostics).Loc.File);
    }

    // ---- the formatted form ----------------------------------------------------------------------------------------

    [Fact]
    public void The_caret_sits_under_the_column()
    {
        var text = "dim b = 2, d = 8\ninput x: f32[b, d]\n   y = softmax(x,    over=q)\noutput x\n";
        var e = CompileFails(text);
        var d = Assert.Single(e.Diagnostics);
        Assert.Equal((3, 27), (d.Loc.Line, d.Loc.Column));
        var lines = e.FormatAll().Split('\n');
        Assert.Equal("case.palm:3:27: error: 'q' is not a declared dim", lines[0]); // no far-fetched "did you mean 'b'?"
        Assert.Equal("   y = softmax(x,    over=q)", lines[1]);
        Assert.Equal(lines[1].IndexOf("q)", StringComparison.Ordinal), lines[2].IndexOf('^'));
        Assert.Equal(lines[2].TrimEnd(), lines[2]);
        Assert.Equal("^", lines[2].Trim());
    }

    [Fact]
    public void The_caret_keeps_tabs_so_it_lines_up()
    {
        var text = "dim b = 2\ninput x: f32[b]\n\ty = exp(qq)\noutput x\n";
        var e = CompileFails(text);
        var d = Assert.Single(e.Diagnostics);
        Assert.Equal((3, 10), (d.Loc.Line, d.Loc.Column));
        Assert.Equal("\t        ^", e.FormatAll().Split('\n')[2]);
    }

    [Fact]
    public void Errors_on_a_continuation_line_have_file_columns()
    {
        var text = "dim b = 2, d = 8\ninput x: f32[b, d]\ny = softmax(\n    x,\n    over=q)\noutput y\n";
        var d = Assert.Single(CompileFails(text).Diagnostics);
        Assert.Equal((5, 10), (d.Loc.Line, d.Loc.Column));
    }

    [Fact]
    public void Windows_line_endings_give_the_same_locations()
    {
        var text = "dim b = 2, d = 8\r\ninput x: f32[b, d]\r\ny = softmax(x, over=q)\r\noutput x\r\n";
        var e = CompileFails(text);
        var d = Assert.Single(e.Diagnostics);
        Assert.Equal((3, 21), (d.Loc.Line, d.Loc.Column));
        Assert.Equal("y = softmax(x, over=q)", e.FormatAll().Split('\n')[1]);
    }

    // ---- includes -------------------------------------------------------------------------------------------------

    [Fact]
    public void Include_of_a_missing_file()
    {
        var e = CompileFails(Text("include \"no/such/dir/arch.palm\""));
        var d = Assert.Single(e.Diagnostics);
        Assert.Equal(new SourceLoc(File, 3, 1), d.Loc);
        Assert.Contains("cannot read 'no/such/dir/arch.palm'", d.Message);
    }

    [Theory]
    [InlineData("")]
    [InlineData(" ")]
    public void Include_of_an_empty_path(string path)
    {
        var e = CompileFails(Text($"include \"{path}\""));
        var d = Assert.Single(e.Diagnostics);
        Assert.Equal(new SourceLoc(File, 3, 1), d.Loc);
    }

    [Fact]
    public void Include_cycle_is_reported_at_the_include_that_closes_it()
    {
        var includes = new Dictionary<string, string> { ["a.palm"] = "# closes the cycle\ninclude \"case.palm\"\n" };
        var e = CompileFails(Text("include \"a.palm\""), includes);
        var d = Assert.Single(e.Diagnostics);
        Assert.Equal(new SourceLoc("a.palm", 2, 1), d.Loc);
        Assert.Contains("include cycle", d.Message);
        Assert.Contains("include \"case.palm\"", e.FormatAll()); // the source line of the included file is shown
    }

    [Fact]
    public void A_file_including_itself_is_a_cycle()
    {
        var d = Assert.Single(CompileFails(Text("include \"case.palm\"")).Diagnostics);
        Assert.Equal(new SourceLoc(File, 3, 1), d.Loc);
        Assert.Contains("include cycle", d.Message);
    }

    [Fact]
    public void Errors_in_an_included_file_carry_its_path()
    {
        var includes = new Dictionary<string, string>
        {
            ["lib/arch.palm"] = "# the architecture\ny = softmax(x, over=q)\nz = y $ 2\n",
        };
        var e = CompileFails(Text("include \"lib/arch.palm\""), includes);
        Assert.Equal(new[] { new SourceLoc("lib/arch.palm", 2, 21), new SourceLoc("lib/arch.palm", 3, 7) }, e.Diagnostics.Select(d => d.Loc).ToArray());
        var lines = e.FormatAll().Split('\n');
        Assert.Equal("lib/arch.palm:2:21: error: 'q' is not a declared dim", lines[0]);
        Assert.Equal("y = softmax(x, over=q)", lines[1]);
        Assert.Equal(new string(' ', 20) + "^", lines[2]);
    }

    [Fact]
    public void Errors_in_both_files_come_in_file_order()
    {
        var includes = new Dictionary<string, string> { ["arch.palm"] = "y = exp(qq)\n" };
        var text = "dim b = 2\ninput x: f32[b]\ninclude \"arch.palm\"\nz = exp(rr)\noutput x\n";
        var e = CompileFails(text, includes);
        Assert.Equal(new[] { new SourceLoc(File, 4, 9), new SourceLoc("arch.palm", 1, 9) }, e.Diagnostics.Select(d => d.Loc).ToArray());
    }

    // ---- never another exception ----------------------------------------------------------------------------------

    /// <summary>
    /// Mutations of the real architecture (each line dropped, each line cut short, tokens deleted or swapped) must
    /// compile or fail with <see cref="DslException"/>; nothing else may escape.
    /// </summary>
    [Fact]
    public void Broken_architectures_raise_only_DslException()
    {
        var main = System.IO.File.ReadAllText(TestPaths.Graph("palm-tiny"));
        var arch = System.IO.File.ReadAllText(Path.Combine(TestPaths.Graphs, "arch", "palm.palm"));
        var lines = arch.Split('\n');
        var variants = new List<string>();
        for (int i = 0; i < lines.Length; i++)
        {
            variants.Add(string.Join("\n", lines.Where((_, k) => k != i)));
            variants.Add(string.Join("\n", lines.Select((l, k) => k == i ? l[..(l.Length / 2)] : l)));
        }
        var rng = new Random(1234);
        var hostile = new[]
        {
            "include \"\"", "include \"no/such.palm\"", "include \"palm-tiny.palm\"", "dim huge = 1e30", "dim nan = 0 / 0",
            "dim big1 = 1e7, big2 = 1e7, big3 = 1e7\ninput z: f32[big1, big2, big3]",
            "y = concat(x, x, along=[vocab, vocab], as=d_model)", "y = reshape(x, to=[vocab])", "y, z = split(x, along=d_model, into=[seq])",
            "y = einsum(x -> [])", "y = einsum(x[batch, seq, d_model], x[batch, seq] -> [batch, kseq])", "x = x @shard(batch: model)",
            "y = softmax(x, over=1.5, over=seq)", "y = gather(x, x, along=batch)", "}", "repeat layers {", "output nope", "mesh pod = 2",
        };
        foreach (var h in hostile)
            for (int k = 0; k < 3; k++)
            {
                var at = rng.Next(lines.Length + 1);
                variants.Add(string.Join("\n", lines.Take(at).Append(h).Concat(lines.Skip(at))));
            }
        var junk = new[] { "", "(", ")", "[", "]", "{", "}", ",", "=", "->", "@", ":", "-", "0", "1e999", "f32", "i32", "seq", "zz", "\"", "#", "\t", "\n" };
        for (int k = 0; k < 300; k++)
        {
            var pos = rng.Next(arch.Length);
            var len = rng.Next(1, 6);
            variants.Add(arch[..pos] + junk[rng.Next(junk.Length)] + arch[Math.Min(arch.Length, pos + len)..]);
        }
        int failed = 0;
        foreach (var v in variants)
        {
            try { Frontend.CompileText("palm-tiny.palm", main, new Dictionary<string, string> { ["arch/palm.palm"] = v }); }
            catch (DslException e)
            {
                failed++;
                Assert.NotEmpty(e.Diagnostics);
                Assert.NotEmpty(e.FormatAll());
            }
            catch (Exception e)
            {
                Assert.Fail($"{e.GetType().Name}: {e.Message}\n--- arch/palm.palm ---\n{v}");
            }
        }
        Assert.True(failed > variants.Count / 2, $"only {failed} of {variants.Count} variants failed to compile");
    }

    internal static DslException CompileFails(string text, IReadOnlyDictionary<string, string>? includes = null)
    {
        try
        {
            var g = Frontend.CompileText(File, text, includes);
            throw new Xunit.Sdk.XunitException($"expected errors, but it compiled:\n{Printer.Print(g)}");
        }
        catch (DslException e)
        {
            return e;
        }
    }
}
