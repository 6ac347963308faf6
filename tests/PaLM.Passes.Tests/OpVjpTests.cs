using System.Collections.Immutable;
using PaLM.CodeGen;
using PaLM.IR;
using PaLM.Runtime;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PaLM.Passes.Tests;

/// <summary>
/// Every op's VJP rule (<see cref="OpDef.Vjp"/>), one test case per op of the op table. For each differentiable op a
/// small graph with random dim sizes (3 seeded trials) applies the op to parameters, once in f32 and once in f64, and
/// reduces every result to the scalar loss <c>sum(result * w)</c> with a fixed random projection <c>w</c> (an input),
/// so every result element gets a distinct cotangent. palmc's gradient (<see cref="Autodiff.GradientGraph"/>, emitted
/// and compiled) is checked two ways: the f32 gradients against TorchSharp autograd on the op's eager formula written
/// here (independent of <c>Rt</c>) within 1e-4 normwise relative error, and the f64 gradients against central finite
/// differences of the compiled loss (h = 1e-6) at up to 8 random elements per parameter within 1e-5 relative.
/// Ops whose rule is deliberately <see cref="Vjps.NotDifferentiable"/> must throw naming the op; <c>repeat</c> is
/// checked as a whole loop against the same loop written eagerly.
/// </summary>
public sealed class OpVjpTests(ITestOutputHelper output)
{
    private const int Trials = 3;
    private const double H = 1e-6;
    private const double AutogradTol = 1e-4;
    private const double FdRelTol = 1e-5;

    /// <summary>Ops whose rule must throw: collectives, the gradient ops themselves, and repeat (transposed as a loop).</summary>
    private static readonly ImmutableHashSet<string> NotDifferentiable =
    [
        "all_gather", "reduce_scatter", "all_reduce", "all_to_all", "shard_slice",
        "silu_grad", "layernorm_dx", "layernorm_dscale", "cross_entropy_grad", "scatter_add", "softmax_grad",
        "causal_softmax", "causal_einsum",   // formed after autodiff from ops whose VJPs are tested
        "causal_einsum_softmax", "causal_einsum_softmax_grad",
        "repeat",
    ];

    public static TheoryData<string> Ops()
    {
        var data = new TheoryData<string>();
        foreach (var op in OpTable.All) data.Add(op.Name);
        return data;
    }

    [Theory]
    [MemberData(nameof(Ops))]
    public void VjpMatchesAutogradAndFiniteDifferences(string op)
    {
        if (NotDifferentiable.Contains(op))
        {
            Assert.False(Cases.ContainsKey(op), $"{op} is listed as not differentiable but also has a case");
            var node = NonDifferentiableNode(op);
            var e = Assert.Throws<NotSupportedException>(() => CallRule(node, NodeDims, _ => true, new GraphBuilder(NodeDims)));
            Assert.Contains(op, e.Message, StringComparison.Ordinal);
            if (op == "repeat")
                for (int t = 0; t < Trials; t++)
                    Run("repeat", RepeatCase, t, RematPolicy.Fixed[t % 3]);
            return;
        }
        Assert.True(Cases.TryGetValue(op, out var c), $"op '{op}' has no VJP test case in OpVjpTests: add one, or list it as not differentiable");
        for (int t = 0; t < Trials; t++) Run(op, c!, t);

        if (op == "constant")
        {
            // No operands, so no cotangents.
            var b = new GraphBuilder(NodeDims);
            var nodes = new List<Node>();
            b.Apply(nodes, OpTable.Get("constant"), [], GraphBuilder.Attrs(("value", new FloatAttr(2)), ("dtype", new DTypeAttr(DType.F32))), ["c"]);
            Assert.Empty(CallRule(nodes[0], NodeDims, _ => true, b));
        }
        if (op == "step")
        {
            // Piecewise constant: its rule gives no cotangent even when the operand wants one.
            var b = new GraphBuilder(NodeDims);
            var nodes = new List<Node>();
            var x = b.NewValue("x", new TensorType(DType.F32, NodeDims["i"], NodeDims["j"]));
            b.Apply(nodes, OpTable.Get("step"), [x], GraphBuilder.Attrs(), ["s"]);
            var cts = CallRule(nodes[0], NodeDims, _ => true, b);
            Assert.Single(cts);
            Assert.Null(cts[0]);
        }
    }

    /// <summary>Integer operands (ids) flow through ordinary ops and a cast into a float product: they get no cotangent.</summary>
    [Fact]
    public void IntegerOperandsGetNoCotangentAndAutodiffStillWorks()
    {
        for (int t = 0; t < Trials; t++) Run("integer operands", IntegerCase, t, checkOp: false);
    }

    [Fact]
    public void EveryCaseNamesAnOp()
    {
        foreach (var name in Cases.Keys.Concat(NotDifferentiable))
            Assert.True(OpTable.TryGet(name, out _), $"OpVjpTests has a case for '{name}', which is not in the op table");
    }

    // ---- cases ------------------------------------------------------------------------------------------------------

    private enum Gen { Normal, Positive, Distinct, Ids }

    /// <summary>A graph argument: float ones are parameters (one per precision), Ids are i32 inputs in [0, size of IdsOver).</summary>
    private sealed record Arg(string Name, string Dims, Gen Gen = Gen.Normal, string? IdsOver = null)
    {
        public string[] DimNames => Split(Dims);
    }

    /// <summary>
    /// One op's test: declared dims (random sizes), arguments, the IR (built once per precision; the results are
    /// projected into the loss) and the same function written eagerly in TorchSharp (results in the IR's dim order).
    /// <paramref name="Valid"/> rejects draws too close to a kink for finite differences (ties of max/min).
    /// </summary>
    private sealed record Case(
        Func<Random, (string Name, long Size)[]> Dims,
        Arg[] Args,
        Func<G, Value[]> Build,
        Func<E, Tensor[]> Eager,
        Func<E, bool>? Valid = null);

    private static long R(Random r, int lo, int hi) => r.Next(lo, hi + 1);

    private static readonly Dictionary<string, Case> Cases = BuildCases();

    private static Dictionary<string, Case> BuildCases()
    {
        var cases = new Dictionary<string, Case>(StringComparer.Ordinal);

        // Binary ops broadcasting by name: lower-rank second and first operands, a permuted equal-rank operand,
        // rank-0 operands, and operands neither of whose dims contain the other's.
        foreach (var (op, f, positiveRight, ties) in new (string, Func<Tensor, Tensor, Tensor>, bool, bool)[]
        {
            ("add", (x, y) => x + y, false, false),
            ("sub", (x, y) => x - y, false, false),
            ("mul", (x, y) => x * y, false, false),
            ("div", (x, y) => x / y, true, false),
            ("maximum", (x, y) => maximum(x, y), false, true),
            ("minimum", (x, y) => minimum(x, y), false, true),
        })
        {
            var right = positiveRight ? Gen.Positive : Gen.Normal;
            var name = op;
            cases[op] = new Case(
                r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4)), ("k", R(r, 2, 4)), ("l", R(r, 2, 3))],
                [new("a", "i,j,k"), new("c", "k,i"), new("d", "i,j"), new("u", ""),
                 new("b", "j,k", right), new("t", "k,j,i", right), new("e", "j,l", right), new("s", "", right)],
                g =>
                [
                    g.Op(name, [g["a"], g["b"]]),
                    g.Op(name, [g["c"], g["t"]]),
                    g.Op(name, [g["a"], g["s"]]),
                    g.Op(name, [g["u"], g["b"]]),
                    g.Op(name, [g["a"], g["t"]]),
                    g.Op(name, [g["d"], g["e"]]),
                    g.Op(name, [g["u"], g["s"]]),
                ],
                e =>
                [
                    f(e["a"], e.Al("b", "i,j,k")),
                    f(e.Al("c", "k,j,i"), e["t"]),
                    f(e["a"], e["s"]),
                    f(e["u"], e["b"]),
                    f(e["a"], e.Al("t", "i,j,k")),
                    f(e.Al("d", "i,j,l"), e.Al("e", "i,j,l")),
                    f(e["u"], e["s"]),
                ],
                ties
                    ? e => new[]
                    {
                        MinGap(e["a"], e.Al("b", "i,j,k")), MinGap(e.Al("c", "k,j,i"), e["t"]), MinGap(e["a"], e["s"]),
                        MinGap(e["u"], e["b"]), MinGap(e["a"], e.Al("t", "i,j,k")), MinGap(e.Al("d", "i,j,l"), e.Al("e", "i,j,l")),
                        MinGap(e["u"], e["s"]),
                    }.Min() > 1e-3
                    : null);
        }

        foreach (var (op, f, gen) in new (string, Func<Tensor, Tensor>, Gen)[]
        {
            ("neg", x => -x, Gen.Normal),
            ("exp", x => x.exp(), Gen.Normal),
            ("log", x => x.log(), Gen.Positive),
            ("rsqrt", x => x.sqrt().reciprocal(), Gen.Positive),
            ("sqrt", x => x.sqrt(), Gen.Positive),
            ("tanh", x => x.tanh(), Gen.Normal),
            ("sigmoid", x => (x.neg().exp() + 1).reciprocal(), Gen.Normal),
            ("silu", x => x / (x.neg().exp() + 1), Gen.Normal),
            ("square", x => x * x, Gen.Normal),
        })
        {
            var name = op;
            cases[op] = new Case(
                r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4))],
                [new("x", "i,j", gen), new("x0", "", gen)],
                g => [g.Op(name, [g["x"]]), g.Op(name, [g["x0"]])],
                e => [f(e["x"]), f(e["x0"])]);
        }

        // step: zero derivative; relu = x * step(x) still has x's.
        cases["step"] = new Case(
            r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4))],
            [new("x", "i,j")],
            g => [g.Op("mul", [g.Op("step", [g["x"]]), g["x"]]), g.Op("step", [g["x"]])],
            e => [e["x"] * e["x"].ge(0).to_type(e.F), e["x"].ge(0).to_type(e.F)],
            e => MinGap(e["x"], zeros_like(e["x"])) > 1e-3);

        cases["constant"] = new Case(
            r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4))],
            [new("x", "i,j")],
            g => [g.Op("mul", [g["x"], g.Const(2.5)]), g.Op("add", [g.Const(-1.0), g["x"]]), g.Const(0.75)],
            e => [e["x"] * 2.5, e["x"] - 1.0, tensor(0.75, e.F)]);

        // cast: f32 -> f64 -> f32 in the f32 copy (f64 -> f64 -> f64 in the f64 one, which finite differences check),
        // and i32 ids cast to float (no cotangent).
        cases["cast"] = new Case(
            r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4)), ("n", 5)],
            [new("x", "i,j"), new("ids", "i,j", Gen.Ids, "n")],
            g =>
            {
                var round = g.Op("cast", [g.Op("cast", [g["x"]], ("to", new DTypeAttr(DType.F64)))], ("to", new DTypeAttr(g.F)));
                return [round, g.Op("mul", [round, g.Op("cast", [g["ids"]], ("to", new DTypeAttr(g.F)))])];
            },
            e =>
            {
                var round = e["x"].to_type(ScalarType.Float64).to_type(e.F);
                return [round, round * e["ids"].to_type(e.F)];
            });

        cases["broadcast"] = new Case(
            r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4)), ("k", R(r, 2, 3))],
            [new("x", "j"), new("x2", "k,i"), new("s", ""), new("x3", "i,j")],
            g =>
            [
                g.Op("broadcast", [g["x"]], ("to", Ds("i,j,k"))),
                g.Op("broadcast", [g["x2"]], ("to", Ds("j,i,k"))),
                g.Op("broadcast", [g["s"]], ("to", Ds("i,j"))),
                g.Op("broadcast", [g["x3"]], ("to", Ds("j,i"))),
            ],
            e =>
            [
                e.Al("x", "i,j,k").expand(e.Shape("i,j,k")),
                e.Al("x2", "j,i,k").expand(e.Shape("j,i,k")),
                e["s"].expand(e.Shape("i,j")),
                e["x3"].permute(1, 0),
            ]);

        cases["sharding_constraint"] = new Case(
            r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4))],
            [new("x", "i,j")],
            g => [g.Op("sharding_constraint", [g["x"]]), g.Op("mul", [g.Op("sharding_constraint", [g["x"]]), g["x"]])],
            e => [e["x"] * 1.0, e["x"] * e["x"]]);

        // einsum: keys' seq read as kseq (same size), renames on either operand and a swap of equal-size labels,
        // three operands, a subscript only one operand has (summed away), and a one-operand einsum.
        cases["einsum"] = new Case(
            r =>
            {
                var seq = R(r, 2, 4);
                return [("b", R(r, 2, 3)), ("seq", seq), ("kseq", seq), ("hd", R(r, 2, 3)),
                        ("i", R(r, 2, 3)), ("j", R(r, 2, 4)), ("k", R(r, 2, 3)), ("l", R(r, 2, 3)), ("m", R(r, 2, 3))];
            },
            [new("q", "b,seq,hd"), new("kk", "b,seq,hd"), new("x", "i,j"), new("w", "j,k"), new("v", "k,l"),
             new("x3", "i,j,m"), new("sw", "seq,kseq"), new("p", "seq,hd"), new("z", "i,j,k")],
            g =>
            [
                g.Einsum([g["q"], g["kk"]], ["b,seq,hd", "b,kseq,hd"], "b,seq,kseq"),
                g.Einsum([g["x"], g["w"], g["v"]], ["i,j", "j,k", "k,l"], "i,l"),
                g.Einsum([g["x3"], g["w"]], ["i,j,m", "j,k"], "k,i"),
                g.Einsum([g["sw"], g["p"]], ["kseq,seq", "seq,hd"], "kseq,hd"),
                g.Einsum([g["z"]], ["i,j,k"], "k,i"),
                g.Einsum([g["q"], g["kk"]], ["b,kseq,hd", "b,seq,hd"], "seq,kseq,b"),
            ],
            e =>
            [
                einsum("bsh,bth->bst", e["q"], e["kk"]),
                einsum("ij,jk,kl->il", e["x"], e["w"], e["v"]),
                einsum("ijm,jk->ki", e["x3"], e["w"]),
                einsum("ts,sh->th", e["sw"], e["p"]),
                einsum("ijk->ki", e["z"]),
                einsum("bth,bsh->stb", e["q"], e["kk"]),
            ]);

        foreach (var (op, f) in new (string, Func<Tensor, long[], Tensor>)[]
        {
            ("sum", (x, d) => x.sum(d)), ("mean", (x, d) => x.mean(d)), ("max", (x, d) => x.amax(d)),
            ("sum_squares", (x, d) => x.square().sum(d)), ("mean_squares", (x, d) => x.square().mean(d)),
        })
        {
            var name = op;
            var gen = op == "max" ? Gen.Distinct : Gen.Normal;   // no ties: max's derivative is defined
            cases[op] = new Case(
                r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4)), ("k", R(r, 2, 3))],
                [new("x", "i,j,k", gen), new("x2", "i,j", gen)],
                g =>
                [
                    g.Op(name, [g["x"]], ("over", Ds("j"))),
                    g.Op(name, [g["x"]], ("over", Ds("k,i"))),
                    g.Op(name, [g["x2"]], ("over", Ds("i,j"))),
                    g.Op(name, [g["x"]], ("over", Ds("i"))),
                ],
                e => [f(e["x"], [1]), f(e["x"], [2, 0]), f(e["x2"], [0, 1]), f(e["x"], [0])]);
        }

        cases["softmax"] = new Case(
            r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4)), ("k", R(r, 2, 3))],
            [new("x", "i,j,k"), new("x2", "i")],
            g => [g.Op("softmax", [g["x"]], ("over", Ds("j"))), g.Op("softmax", [g["x"]], ("over", Ds("k"))), g.Op("softmax", [g["x2"]], ("over", Ds("i")))],
            e => [e["x"].softmax(1), e["x"].softmax(2), e["x2"].softmax(0)]);

        cases["logsumexp"] = new Case(
            r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4)), ("k", R(r, 2, 3))],
            [new("x", "i,j,k"), new("x2", "i")],
            g => [g.Op("logsumexp", [g["x"]], ("over", Ds("k"))), g.Op("logsumexp", [g["x"]], ("over", Ds("i"))), g.Op("logsumexp", [g["x2"]], ("over", Ds("i")))],
            e => [LogSumExp(e["x"], 2), LogSumExp(e["x"], 0), LogSumExp(e["x2"], 0)]);

        cases["reshape"] = new Case(
            r =>
            {
                long i = R(r, 2, 3), j = R(r, 2, 4), k = R(r, 2, 3);
                return [("i", i), ("j", j), ("k", k), ("ij", i * j), ("m", i * j * k)];
            },
            [new("x", "i,j,k")],
            g =>
            [
                g.Op("reshape", [g["x"]], ("to", Ds("ij,k"))),
                g.Op("reshape", [g["x"]], ("to", Ds("k,ij"))),
                g.Op("reshape", [g["x"]], ("to", Ds("m"))),
                g.Op("reshape", [g["x"]], ("to", Ds("j,i,k"))),
            ],
            e => [e["x"].reshape(e.Shape("ij,k")), e["x"].reshape(e.Shape("k,ij")), e["x"].reshape(e.Shape("m")), e["x"].reshape(e.Shape("j,i,k"))]);

        cases["transpose"] = new Case(
            r => [("i", R(r, 2, 4)), ("j", R(r, 2, 4)), ("k", R(r, 2, 3))],
            [new("x", "i,j,k")],
            g => [g.Op("transpose", [g["x"]], ("to", Ds("k,i,j"))), g.Op("transpose", [g["x"]], ("to", Ds("j,i,k")))],
            e => [e["x"].permute(2, 0, 1), e["x"].permute(1, 0, 2)]);

        // split: only some pieces are used, so the others' cotangents are zeros.
        cases["split"] = new Case(
            r =>
            {
                long ja = R(r, 1, 3), jb = R(r, 1, 3), j1 = R(r, 1, 2), j2 = R(r, 1, 2), j3 = R(r, 1, 2);
                return [("i", R(r, 2, 3)), ("ja", ja), ("jb", jb), ("j", ja + jb), ("j1", j1), ("j2", j2), ("j3", j3), ("jj", j1 + j2 + j3)];
            },
            [new("x", "i,j"), new("x2", "jj,i")],
            g =>
            {
                var s1 = g.Ops("split", [g["x"]], ("along", Ds("j")), ("into", Ds("ja,jb")));
                var s2 = g.Ops("split", [g["x2"]], ("along", Ds("jj")), ("into", Ds("j1,j2,j3")));
                return [s1[1], s2[0], s2[2]];
            },
            e =>
            {
                long ja = e.Size("ja"), j1 = e.Size("j1"), j2 = e.Size("j2");
                return [e["x"].narrow(1, ja, e.Size("jb")), e["x2"].narrow(0, 0, j1), e["x2"].narrow(0, j1 + j2, e.Size("j3"))];
            });

        cases["concat"] = new Case(
            r =>
            {
                long k1 = R(r, 1, 3), k2 = R(r, 1, 3), m1 = R(r, 1, 2), m2 = R(r, 1, 2), m3 = R(r, 1, 2);
                return [("i", R(r, 2, 3)), ("k1", k1), ("k2", k2), ("k", k1 + k2), ("m1", m1), ("m2", m2), ("m3", m3), ("m", m1 + m2 + m3), ("n", R(r, 2, 3))];
            },
            [new("a", "i,k1"), new("b", "i,k2"), new("c", "m1,n"), new("d", "m2,n"), new("f", "m3,n")],
            g =>
            [
                g.Op("concat", [g["a"], g["b"]], ("along", Ds("k1,k2")), ("as", Ds("k"))),
                g.Op("concat", [g["c"], g["d"], g["f"]], ("along", Ds("m1,m2,m3")), ("as", Ds("m"))),
            ],
            e => [cat([e["a"], e["b"]], 1), cat([e["c"], e["d"], e["f"]], 0)]);

        cases["layernorm"] = new Case(
            r => [("i", R(r, 2, 3)), ("j", R(r, 2, 3)), ("d", R(r, 3, 5))],
            [new("x", "i,j,d"), new("s", "d"), new("x2", "d")],
            g =>
            [
                g.Op("layernorm", [g["x"], g["s"]], ("over", Ds("d"))),
                g.Op("layernorm", [g["x2"], g["s"]], ("over", Ds("d")), ("eps", new FloatAttr(1e-3))),
            ],
            e => [LayerNorm(e["x"], e["s"], 1e-6), LayerNorm(e["x2"], e["s"], 1e-3)]);

        cases["rope"] = new Case(
            r => [("b", R(r, 1, 2)), ("s", R(r, 2, 4)), ("f", 2 * R(r, 1, 3))],
            [new("x", "b,s,f"), new("x2", "f,s")],
            g =>
            [
                g.Op("rope", [g["x"]], ("seq", Ds("s")), ("feature", Ds("f"))),
                g.Op("rope", [g["x2"]], ("seq", Ds("s")), ("feature", Ds("f")), ("inverse", new IntAttr(1))),
            ],
            e => [Rope(e["x"], 1, 2, inverse: false), Rope(e["x2"], 1, 0, inverse: true)]);

        // causal_mask: -inf fill followed by softmax (as attention does), and fill=0 with the key dim first.
        cases["causal_mask"] = new Case(
            r => [("b", R(r, 1, 2)), ("q", R(r, 2, 4)), ("kk", R(r, 2, 4))],
            [new("x", "b,q,kk"), new("x2", "kk,q")],
            g =>
            [
                g.Op("softmax", [g.Op("causal_mask", [g["x"]], ("query", Ds("q")), ("key", Ds("kk")))], ("over", Ds("kk"))),
                g.Op("causal_mask", [g["x2"]], ("query", Ds("q")), ("key", Ds("kk")), ("fill", new FloatAttr(0.0))),
            ],
            e =>
            {
                var mask = CausalMask(e.Size("q"), e.Size("kk"));        // [q, kk]: key > query
                return [e["x"].masked_fill(mask.unsqueeze(0), double.NegativeInfinity).softmax(2), e["x2"].masked_fill(mask.t(), 0.0)];
            });

        // gather: more ids than rows, so ids repeat and scatter_add must accumulate.
        cases["gather"] = new Case(
            r => [("v", R(r, 2, 3)), ("d", R(r, 2, 3)), ("b", R(r, 2, 3)), ("s", R(r, 2, 3))],
            [new("t", "v,d"), new("t2", "d,v"), new("ids", "b,s", Gen.Ids, "v")],
            g => [g.Op("gather", [g["t"], g["ids"]], ("along", Ds("v"))), g.Op("gather", [g["t2"], g["ids"]], ("along", Ds("v")))],
            e =>
            {
                var flat = e["ids"].reshape(-1).to_type(ScalarType.Int64);
                return [e["t"].index_select(0, flat).reshape(e.Shape("b,s,d")), e["t2"].index_select(1, flat).reshape(e.Shape("d,b,s"))];
            });

        cases["cross_entropy"] = new Case(
            r => [("b", R(r, 1, 2)), ("s", R(r, 2, 3)), ("v", R(r, 2, 5))],
            [new("x", "b,s,v"), new("x2", "v,b"), new("tg", "b,s", Gen.Ids, "v"), new("tg2", "b", Gen.Ids, "v")],
            g =>
            [
                g.Op("cross_entropy", [g["x"], g["tg"]], ("over", Ds("v")), ("z_loss", new FloatAttr(0.1))),
                g.Op("cross_entropy", [g["x2"], g["tg2"]], ("over", Ds("v")), ("z_loss", new FloatAttr(0.05))),
                g.Op("cross_entropy", [g["x"], g["tg"]], ("over", Ds("v"))),
            ],
            e => [CrossEntropy(e["x"], e["tg"], 2, 0.1), CrossEntropy(e["x2"], e["tg2"], 0, 0.05), CrossEntropy(e["x"], e["tg"], 2, 0)]);

        return cases;
    }

    /// <summary>
    /// repeat (lax.scan): a carried state h, a stacked per-layer weight W (h read as [b, dd] so the layer maps d to
    /// d), an invariant bias v, and a per-iteration stacked result h*h; forward order (reverse = 0).
    /// </summary>
    private static readonly Case RepeatCase = new(
        r =>
        {
            var d = R(r, 2, 4);
            return [("b", R(r, 2, 3)), ("d", d), ("dd", d), ("layers", R(r, 2, 3))];
        },
        [new("h0", "b,d"), new("W", "layers,dd,d"), new("v", "d")],
        g =>
        {
            var b = g.B;
            var h = b.NewValue("h", g["h0"].Type);
            var w = b.NewValue("w", g["W"].Type.WithDims(g["W"].Type.Dims.RemoveAt(0)));
            var v = b.NewValue("vb", g["v"].Type);
            var body = new List<Node>();
            var inner = new G(b, body, g.F, new Dictionary<string, Value> { ["h"] = h, ["w"] = w, ["v"] = v });
            var hn = inner.Op("tanh", [inner.Op("add", [inner.Einsum([h, w], ["b,dd", "dd,d"], "b,d"), v])]);
            var sq = inner.Op("mul", [hn, hn]);
            var outs = b.Apply(g.Nodes, OpTable.Get("repeat"), [g["h0"], g["W"], g["v"]],
                GraphBuilder.Attrs(("count", Ds("layers")), ("carried", new IntAttr(1)), ("stacked", new IntAttr(1)), ("reverse", new IntAttr(0))),
                ["h_out", "sq_out"], null, [new Block([h, w, v], [.. body], [hn, sq])]);
            return [outs[0], outs[1]];
        },
        e =>
        {
            var h = e["h0"];
            var ys = new List<Tensor>();
            for (long l = 0; l < e.Size("layers"); l++)
            {
                h = (einsum("bk,kd->bd", h, e["W"].select(0, l)) + e["v"]).tanh();
                ys.Add(h * h);
            }
            return [h, stack(ys, 0)];
        });

    /// <summary>Ids through add, mul, neg, square, maximum, step, an i32 constant and a transpose, then cast into a float product.</summary>
    private static readonly Case IntegerCase = new(
        r => [("b", R(r, 2, 4)), ("c", R(r, 2, 3)), ("n", 5)],
        [new("x", "b,c"), new("ids", "b,c", Gen.Ids, "n")],
        g =>
        {
            var ids = g["ids"];
            var m = g.Op("add", [g.Op("mul", [ids, ids]), g.Op("neg", [ids])]);
            var m2 = g.Op("maximum", [m, g.Op("square", [ids])]);
            var one = g.Op("constant", [], ("value", new FloatAttr(1)), ("dtype", new DTypeAttr(DType.I32)));
            var m3 = g.Op("add", [g.Op("mul", [m2, g.Op("step", [ids])]), one]);
            var t = g.Op("transpose", [m3], ("to", Ds("c,b")));
            return [g.Op("mul", [g["x"], g.Op("cast", [t], ("to", new DTypeAttr(g.F)))])];
        },
        e => [e["x"] * (e["ids"].to_type(e.F).square() + 1)]);

    // ---- graph and eager contexts -----------------------------------------------------------------------------------

    /// <summary>IR side of a case, one precision: named values and node builders.</summary>
    private sealed class G(GraphBuilder b, List<Node> nodes, DType f, Dictionary<string, Value> values)
    {
        public GraphBuilder B => b;
        public List<Node> Nodes => nodes;

        /// <summary>The float dtype of this copy.</summary>
        public DType F => f;

        public Value this[string name] => values[name];

        public Value Op(string op, Value[] inputs, params (string Name, Attr Value)[] attrs) => Ops(op, inputs, attrs)[0];

        public ImmutableArray<Value> Ops(string op, Value[] inputs, params (string Name, Attr Value)[] attrs) =>
            b.Apply(nodes, OpTable.Get(op), inputs, WithDefaults(op, attrs), [op]);

        public Value Const(double v) => Op("constant", [], ("value", new FloatAttr(v)), ("dtype", new DTypeAttr(f)));

        public Value Einsum(Value[] inputs, string[] operands, string output) =>
            Op("einsum", inputs, ("operands", new DimListsAttr([.. operands.Select(o => Split(o).ToImmutableArray())])), ("output", Ds(output)));
    }

    /// <summary>Eager side of a case: tensors by argument name (float ones in dtype <see cref="F"/>, ids i32).</summary>
    private sealed class E(Dictionary<string, Tensor> tensors, Dictionary<string, string[]> dims, Dictionary<string, long> sizes, ScalarType f)
    {
        public ScalarType F => f;

        public Tensor this[string name] => tensors[name];

        public long Size(string dim) => sizes[dim];

        public long[] Shape(string dimList) => Split(dimList).Select(d => sizes[d]).ToArray();

        /// <summary>Argument <paramref name="name"/> aligned by dim name to <paramref name="to"/> (permuted, size 1 where it lacks a dim).</summary>
        public Tensor Al(string name, string to)
        {
            var from = dims[name];
            var target = Split(to);
            var perm = Enumerable.Range(0, from.Length).OrderBy(k => Array.IndexOf(target, from[k])).Select(k => (long)k).ToArray();
            var x = from.Length > 1 ? tensors[name].permute(perm) : tensors[name];
            return x.reshape(target.Select(d => from.Contains(d) ? sizes[d] : 1L).ToArray());
        }
    }

    /// <summary>The attributes with every omitted one that has a default filled in, as the DSL binder does.</summary>
    private static ImmutableSortedDictionary<string, Attr> WithDefaults(string op, (string Name, Attr Value)[] attrs)
    {
        var all = attrs.ToList();
        foreach (var spec in OpTable.Get(op).Signature.Attrs)
            if (spec.Default is { } d && !all.Any(a => a.Name == spec.Name)) all.Add((spec.Name, d));
        return GraphBuilder.Attrs([.. all]);
    }

    private static string[] Split(string dims) => dims.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);

    private static DimsAttr Ds(string dims) => new([.. Split(dims)]);

    // ---- eager formulas (TorchSharp, independent of Rt) -------------------------------------------------------------

    private static Tensor LogSumExp(Tensor x, long dim)
    {
        var m = x.amax([dim], keepdim: true).detach();
        return (x - m).exp().sum([dim], keepdim: true).log().add(m).squeeze(dim);
    }

    private static Tensor LayerNorm(Tensor x, Tensor scale, double eps)
    {
        var centered = x - x.mean([-1L], keepdim: true);
        var variance = (centered * centered).mean([-1L], keepdim: true);
        return centered / variance.add(eps).sqrt() * scale;
    }

    /// <summary>Halves rotated by angle(s, i) = s * 10000^(-2i/K): [x1 cos - x2 sin, x2 cos + x1 sin]; inverse negates the angle.</summary>
    private static Tensor Rope(Tensor x, long seqAxis, long featureAxis, bool inverse)
    {
        long s = x.shape[seqAxis], k = x.shape[featureAxis];
        var cos = new double[s * k];
        var sin = new double[s * k];
        for (long p = 0; p < s; p++)
            for (long i = 0; i < k; i++)
            {
                var angle = p * Math.Pow(10000.0, -2.0 * (i % (k / 2)) / k);
                cos[p * k + i] = Math.Cos(angle);
                sin[p * k + i] = (inverse ? -1 : 1) * Math.Sin(angle);
            }
        var view = Enumerable.Repeat(1L, (int)x.dim()).ToArray();
        view[seqAxis] = s;
        view[featureAxis] = k;
        Tensor Table(double[] v)
        {
            var t = tensor(v, ScalarType.Float64).reshape(s, k);
            return (seqAxis > featureAxis ? t.t() : t).reshape(view).to_type(x.dtype);
        }
        var x1 = x.narrow(featureAxis, 0, k / 2);
        var x2 = x.narrow(featureAxis, k / 2, k / 2);
        return x * Table(cos) + cat([-x2, x1], featureAxis) * Table(sin);
    }

    /// <summary>[q, k] booleans, true where key &gt; query.</summary>
    private static Tensor CausalMask(long q, long k) =>
        arange(k, ScalarType.Int64).unsqueeze(0).gt(arange(q, ScalarType.Int64).unsqueeze(1));

    private static Tensor CrossEntropy(Tensor logits, Tensor targets, long axis, double zLoss)
    {
        var lse = LogSumExp(logits, axis);
        var picked = logits.gather(axis, targets.to_type(ScalarType.Int64).unsqueeze(axis)).squeeze(axis);
        return lse - picked + lse * lse * zLoss;
    }

    private static double MinGap(Tensor a, Tensor b) => (a - b).abs().min().to_type(ScalarType.Float64).item<double>();

    // ---- the check --------------------------------------------------------------------------------------------------

    private void Run(string name, Case c, int trial, RematPolicy? policy = null, bool checkOp = true)
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var what = $"{name} (trial {trial})";
        var rng = new Random(StableHash(name) ^ ((trial + 1) * 7919));
        var dimList = c.Dims(rng);
        var dims = dimList.Select(d => new Dim(d.Name, d.Size)).ToImmutableArray();
        var sizes = dimList.ToDictionary(d => d.Name, d => d.Size);
        var argDims = c.Args.ToDictionary(a => a.Name, a => a.DimNames);
        long[] ShapeOf(Arg a) => a.DimNames.Select(d => sizes[d]).ToArray();

        // Values (as doubles: the same draw feeds the f32 and f64 copies); redraw near kinks.
        Dictionary<string, double[]> values;
        for (int attempt = 0; ; attempt++)
        {
            values = c.Args.ToDictionary(a => a.Name, a => Draw(rng, a, ShapeOf(a), sizes));
            if (c.Valid is null) break;
            using var s = NewDisposeScope();
            if (c.Valid(Eager(ScalarType.Float64, grad: false).E)) break;
            Assert.True(attempt < 200, $"{what}: no draw away from ties");
        }

        (E E, Dictionary<string, Tensor> Leaves) Eager(ScalarType f, bool grad)
        {
            var ts = new Dictionary<string, Tensor>();
            foreach (var a in c.Args)
            {
                var t = Make(values[a.Name], ShapeOf(a), a.Gen == Gen.Ids ? ScalarType.Int32 : f);
                ts[a.Name] = grad && a.Gen != Gen.Ids ? t.requires_grad_(true) : t;
            }
            return (new E(ts, argDims, sizes, f), ts);
        }

        // ---- the graph: both precisions side by side; loss = loss64 + cast(loss32) ----
        var b = new GraphBuilder(dims.ToDictionary(d => d.Name));
        var nodes = new List<Node>();
        var args = new List<GraphArg>();
        var floatArgs = c.Args.Where(a => a.Gen != Gen.Ids).ToArray();
        var copies = new[] { DType.F32, DType.F64 };
        var named = copies.ToDictionary(f => f, _ => new Dictionary<string, Value>());
        var paramInfo = new List<(Value Value, Arg Arg, DType F)>();
        foreach (var f in copies)
            foreach (var a in floatArgs)
            {
                var v = b.NewValue($"{a.Name}_{DTypes.Name(f)}", new TensorType(f, a.DimNames.Select(d => b.Dims[d]).ToImmutableArray()));
                args.Add(new GraphArg(v, ArgKind.Parameter, new Init(InitKind.Normal, 1.0)));
                named[f][a.Name] = v;
                paramInfo.Add((v, a, f));
            }
        var inputTensors = new List<Tensor>();
        foreach (var a in c.Args.Where(a => a.Gen == Gen.Ids))
        {
            var v = b.NewValue(a.Name, new TensorType(DType.I32, a.DimNames.Select(d => b.Dims[d]).ToImmutableArray()));
            args.Add(new GraphArg(v, ArgKind.Input, null));
            inputTensors.Add(Make(values[a.Name], ShapeOf(a), ScalarType.Int32));
            foreach (var f in copies) named[f][a.Name] = v;
        }
        var results = new Dictionary<DType, Value[]>();
        var partial = new Dictionary<DType, Value>();
        var weights = new List<double[]>();
        foreach (var f in copies)
        {
            var g = new G(b, nodes, f, named[f]);
            var ys = c.Build(g);
            results[f] = ys;
            Value? total = null;
            for (int k = 0; k < ys.Length; k++)
            {
                var y = ys[k];
                Assert.True(y.Type.DType == f, $"{what}: result {k} of the {DTypes.Name(f)} copy is {y.Type}");
                if (f == DType.F32) weights.Add(Gaussians(rng, (int)y.Type.ElementCount));
                var w = b.NewValue($"w{k}_{DTypes.Name(f)}", y.Type);
                args.Add(new GraphArg(w, ArgKind.Input, null));
                inputTensors.Add(Make(weights[k], y.Type.Shape, ToScalar(f)));
                var term = g.Op("mul", [y, w]);
                if (y.Type.Rank > 0) term = g.Op("sum", [term], ("over", new DimsAttr([.. y.Type.Dims.Select(d => d.Name)])));
                total = total is null ? term : g.Op("add", [total, term]);
            }
            partial[f] = total!;
        }
        var top = new G(b, nodes, DType.F64, new Dictionary<string, Value>());
        var loss = top.Op("add", [partial[DType.F64], top.Op("cast", [partial[DType.F32]], ("to", new DTypeAttr(DType.F64)))]);
        var graph = new Graph("vjp_" + name.Replace(' ', '_'), dims, null, [.. args], new Block([.. args.Select(a => a.Value)], [.. nodes], [loss]), ["loss"]);
        Verifier.Verify(graph);

        if (checkOp)
        {
            // The op is really there, and its rule gives no cotangent to operands that want none.
            var uses = graph.Body.AllNodes().Where(n => n.Op.Name == name).ToList();
            Assert.True(uses.Count > 0, $"{what}: the case's graph does not use {name}");
            if (!uses[0].Op.HasRegion)
                foreach (var n in uses)
                {
                    var cts = CallRule(n, b.Dims, _ => false, GraphBuilder.Continuing(graph));
                    Assert.True(cts.Count == n.Inputs.Length, $"{what}: the rule returned {cts.Count} cotangents for {n.Inputs.Length} operands");
                    Assert.True(cts.All(x => x is null), $"{what}: the rule gave a cotangent to an operand that wants none");
                }
        }

        Graph grad;
        IGraphProgram program;
        try
        {
            grad = Autodiff.GradientGraph(graph, "loss", policy);
            program = RoslynCompiler.CompileInMemory(Emitter.Emit(grad));
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            throw new InvalidOperationException($"{what}: autodiff or compiling the gradient failed: {e.Message}\n{Printer.Print(graph)}", e);
        }
        Assert.Equal(paramInfo.Select(p => p.Value.Name), program.Parameters.Select(p => p.Name));
        var outIndex = program.Outputs.Select((o, i) => (o.Name, i)).ToDictionary(x => x.Name, x => x.i);
        var ps = paramInfo.Select(p => Make(values[p.Arg.Name], ShapeOf(p.Arg), ToScalar(p.F))).ToArray();
        var ins = inputTensors.ToArray();
        var outs = program.Forward(ps, ins);
        var palmLoss = outs[0].item<double>();

        // ---- forward: palmc's loss against the eager formula (f32 copy in f32, f64 copy in f64) ----
        double EagerLoss(Tensor[] ys, out double scale)
        {
            double l = 0;
            scale = 0;
            Assert.True(ys.Length == results[DType.F32].Length, $"{what}: eager gives {ys.Length} results, the graph {results[DType.F32].Length}");
            for (int k = 0; k < ys.Length; k++)
            {
                var expect = results[DType.F32][k].Type.Shape;
                Assert.True(ys[k].shape.SequenceEqual(expect), $"{what}: eager result {k} has shape [{string.Join(", ", ys[k].shape)}], the IR's is {results[DType.F32][k].Type} [{string.Join(", ", expect)}]");
                var term = ys[k].detach().to_type(ScalarType.Float64) * Make(weights[k], expect, ScalarType.Float64);
                l += term.sum().item<double>();
                scale += term.abs().sum().item<double>();
            }
            return l;
        }
        var (e32, leaves) = Eager(ScalarType.Float32, grad: true);
        var ys32 = c.Eager(e32);
        var eagerLoss32 = EagerLoss(ys32, out var scale32);
        var eagerLoss64 = EagerLoss(c.Eager(Eager(ScalarType.Float64, grad: false).E), out var scale64);
        Assert.True(Math.Abs(palmLoss - (eagerLoss32 + eagerLoss64)) <= 1e-5 * (scale32 + scale64) + 1e-9,
            $"{what}: palmc's loss {palmLoss} differs from the eager formula's {eagerLoss32 + eagerLoss64}\n{Printer.Print(graph)}");

        // ---- f32 gradients against TorchSharp autograd ----
        Tensor? eagerLoss = null;
        for (int k = 0; k < ys32.Length; k++)
        {
            var term = (ys32[k] * Make(weights[k], ys32[k].shape, ScalarType.Float32)).sum();
            eagerLoss = eagerLoss is null ? term : eagerLoss + term;
        }
        if (eagerLoss!.requires_grad) eagerLoss.backward();
        double worstAutograd = 0;
        foreach (var (v, a, _) in paramInfo.Where(p => p.F == DType.F32))
        {
            var got = outs[outIndex["d_" + v.Name]];
            var want = leaves[a.Name].grad ?? zeros_like(leaves[a.Name]);
            Assert.True(got.shape.SequenceEqual(want.shape), $"{what}: d_{v.Name} has shape [{string.Join(", ", got.shape)}], expected [{string.Join(", ", want.shape)}]");
            var err = RelErr(got, want);
            worstAutograd = Math.Max(worstAutograd, err);
            Assert.True(err < AutogradTol,
                $"{what}: d_{v.Name} differs from TorchSharp autograd by {err:E2} (normwise relative)\npalmc: {Show(got)}\nautograd: {Show(want)}\n{Printer.Print(grad)}");
        }

        // ---- f64 gradients against central finite differences of the compiled loss ----
        double Loss()
        {
            using var s = NewDisposeScope();
            return program.Forward(ps, ins)[0].item<double>();
        }
        double worstFd = 0;
        for (int pi = 0; pi < paramInfo.Count; pi++)
        {
            var (v, a, f) = paramInfo[pi];
            if (f != DType.F64) continue;
            var analytic = outs[outIndex["d_" + v.Name]].contiguous().data<double>().ToArray();
            var gradScale = analytic.Select(Math.Abs).DefaultIfEmpty(0).Max();
            var original = ps[pi];
            var x = values[a.Name].ToArray();
            foreach (var idx in Pick(rng, x.Length, 8))
            {
                var x0 = x[idx];
                x[idx] = x0 + H;
                ps[pi] = Make(x, ShapeOf(a), ScalarType.Float64);
                var plus = Loss();
                x[idx] = x0 - H;
                ps[pi] = Make(x, ShapeOf(a), ScalarType.Float64);
                var minus = Loss();
                x[idx] = x0;
                ps[pi] = original;
                var fd = (plus - minus) / (2 * H);
                // Relative to the entry; for entries much smaller than the parameter's largest, relative to that scale.
                var err = Math.Abs(fd - analytic[idx]) / Math.Max(Math.Abs(analytic[idx]), Math.Max(1e-2 * gradScale, 1e-3));
                worstFd = Math.Max(worstFd, err);
                Assert.True(err <= FdRelTol,
                    $"{what}: d_{v.Name}[{idx}] is {analytic[idx]:R}, central finite differences give {fd:R} (relative error {err:E2})\n{Printer.Print(grad)}");
            }
        }
        output.WriteLine($"{what}: autograd {worstAutograd:E1}, finite differences {worstFd:E1}");
    }

    // ---- helpers ----------------------------------------------------------------------------------------------------

    private static readonly Dictionary<string, Dim> NodeDims = new Dim[]
    {
        new("i", 2), new("i2", 4), new("j", 3), new("j2", 6), new("v", 5), new("bb", 3), new("layers", 2),
    }.ToDictionary(d => d.Name);

    /// <summary>A well-typed node of a non-differentiable op, for calling its rule.</summary>
    private static Node NonDifferentiableNode(string op)
    {
        var b = new GraphBuilder(NodeDims);
        var nodes = new List<Node>();
        Value V(string name, DType t, string dims) => b.NewValue(name, new TensorType(t, Split(dims).Select(d => NodeDims[d]).ToImmutableArray()));
        void Apply(Value[] inputs, params (string Name, Attr Value)[] attrs) =>
            b.Apply(nodes, OpTable.Get(op), inputs, WithDefaults(op, attrs), ["y"]);
        var axes = ("axes", (Attr)Ds("a"));
        switch (op)
        {
            case "all_gather": Apply([V("x", DType.F32, "i,j")], ("along", Ds("i")), ("to", Ds("i2")), axes); break;
            case "reduce_scatter" or "shard_slice": Apply([V("x", DType.F32, "i2,j")], ("along", Ds("i2")), ("to", Ds("i")), axes); break;
            case "all_reduce": Apply([V("x", DType.F32, "i,j")], axes); break;
            case "all_to_all":
                Apply([V("x", DType.F32, "i2,j")], ("split", Ds("i2")), ("split_to", Ds("i")), ("concat", Ds("j")), ("concat_to", Ds("j2")), axes);
                break;
            case "silu_grad": Apply([V("dy", DType.F32, "i,j"), V("x", DType.F32, "i,j")]); break;
            case "softmax_grad": Apply([V("dy", DType.F32, "i,j"), V("x", DType.F32, "i,j")], ("over", Ds("j"))); break;
            case "causal_softmax": Apply([V("x", DType.F32, "i,j")], ("query", Ds("i")), ("key", Ds("j"))); break;
            case "causal_einsum":
                Apply([V("x", DType.F32, "i,j"), V("w", DType.F32, "j,j2")], ("operands", new DimListsAttr([["i", "j"], ["j", "j2"]])),
                    ("output", Ds("i,j2")), ("query", Ds("i")), ("key", Ds("j")), ("blocks", new IntAttr(2)));
                break;
            case "causal_einsum_softmax":
                Apply([V("x", DType.F32, "i,j"), V("w", DType.F32, "j,j2")], ("operands", new DimListsAttr([["i", "j"], ["j", "j2"]])),
                    ("output", Ds("i,j2")), ("query", Ds("i")), ("key", Ds("j2")), ("blocks", new IntAttr(2)));
                break;
            case "causal_einsum_softmax_grad":
                Apply([V("x", DType.F32, "i,j"), V("w", DType.F32, "j,j2"), V("y", DType.F32, "i,j2")],
                    ("operands", new DimListsAttr([["i", "j"], ["j", "j2"], ["i", "j2"]])),
                    ("output", Ds("i,j2")), ("query", Ds("i")), ("key", Ds("j2")), ("blocks", new IntAttr(2)));
                break;
            case "layernorm_dx": Apply([V("dy", DType.F32, "i,j"), V("x", DType.F32, "i,j"), V("s", DType.F32, "j")], ("over", Ds("j"))); break;
            case "layernorm_dscale": Apply([V("dy", DType.F32, "i,j"), V("x", DType.F32, "i,j")], ("over", Ds("j"))); break;
            case "cross_entropy_grad": Apply([V("dy", DType.F32, "i"), V("x", DType.F32, "i,v"), V("t", DType.I32, "i")], ("over", Ds("v"))); break;
            case "scatter_add": Apply([V("dy", DType.F32, "i,bb"), V("ids", DType.I32, "bb")], ("along", Ds("v")), ("to", Ds("i,v"))); break;
            case "repeat":
                {
                    var x = V("x", DType.F32, "i,j");
                    var h = V("h", DType.F32, "i,j");
                    var body = new List<Node>();
                    var hn = b.Apply(body, OpTable.Get("neg"), [h], GraphBuilder.Attrs(), ["hn"])[0];
                    b.Apply(nodes, OpTable.Get("repeat"), [x],
                        WithDefaults("repeat", [("count", Ds("layers")), ("carried", new IntAttr(1)), ("stacked", new IntAttr(0))]),
                        ["y"], null, [new Block([h], [.. body], [hn])]);
                    break;
                }
            default: throw new InvalidOperationException($"no node for non-differentiable op {op}: add one to OpVjpTests");
        }
        return nodes[^1];
    }

    /// <summary>Calls <paramref name="n"/>'s VJP rule directly, with a fresh cotangent for every result.</summary>
    private static IReadOnlyList<Value?> CallRule(Node n, IReadOnlyDictionary<string, Dim> dims, Func<int, bool> wants, GraphBuilder b)
    {
        var emitted = new List<Node>();
        var cts = n.Outputs.Select(o => (Value?)b.NewValue("ct", o.Type)).ToImmutableArray();
        var ctx = new VjpContext(n, v => v, cts, wants, (op, inputs, attrs, hint) => b.Apply(emitted, op, inputs, attrs, [hint]), dims);
        return n.Op.Vjp(ctx);
    }

    private static ScalarType ToScalar(DType t) => t switch
    {
        DType.F32 => ScalarType.Float32,
        DType.F64 => ScalarType.Float64,
        DType.I32 => ScalarType.Int32,
        _ => ScalarType.BFloat16,
    };

    private static Tensor Make(double[] values, long[] shape, ScalarType dtype) =>
        tensor(values, ScalarType.Float64).reshape(shape).to_type(dtype);

    private static double[] Draw(Random r, Arg a, long[] shape, Dictionary<string, long> sizes)
    {
        var n = (int)shape.Aggregate(1L, (x, y) => x * y);
        switch (a.Gen)
        {
            case Gen.Normal: return Gaussians(r, n);
            case Gen.Positive: return Enumerable.Range(0, n).Select(_ => 0.5 + 1.5 * r.NextDouble()).ToArray();
            case Gen.Distinct:
                {
                    // A shuffled grid: every pair of elements at least 3/n apart, so max has no near-ties.
                    var perm = Enumerable.Range(0, n).OrderBy(_ => r.Next()).ToArray();
                    return perm.Select(p => (p - n / 2.0) * 3.0 / n).ToArray();
                }
            default: return Enumerable.Range(0, n).Select(_ => (double)r.Next(0, (int)sizes[a.IdsOver!])).ToArray();
        }
    }

    private static double[] Gaussians(Random r, int n) =>
        Enumerable.Range(0, n).Select(_ => Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble())).ToArray();

    /// <summary>Up to <paramref name="k"/> distinct indices below <paramref name="n"/>.</summary>
    private static IEnumerable<int> Pick(Random r, int n, int k) => Enumerable.Range(0, n).OrderBy(_ => r.Next()).Take(k).ToArray();

    /// <summary>max|a - b| / max|b|.</summary>
    private static double RelErr(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        var a64 = a.detach().to_type(ScalarType.Float64);
        var b64 = b.detach().to_type(ScalarType.Float64);
        return (a64 - b64).abs().max().item<double>() / Math.Max(b64.abs().max().item<double>(), 1e-30);
    }

    private static string Show(Tensor t) =>
        "[" + string.Join(", ", t.detach().to_type(ScalarType.Float64).contiguous().data<double>().ToArray().Take(24).Select(x => x.ToString("G5", System.Globalization.CultureInfo.InvariantCulture))) + "]";

    /// <summary>FNV-1a: string.GetHashCode differs between processes.</summary>
    private static int StableHash(string s)
    {
        unchecked
        {
            uint h = 2166136261;
            foreach (var ch in s) h = (h ^ ch) * 16777619;
            return (int)(h & 0x7fffffff);
        }
    }
}
