using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Spmd.Tests;

/// <summary>
/// Per-op sharding rules, DTensor style: each op on random shardings of its operands (and, in a second form, on an
/// operand that is a partial sum: produced by a contraction split over a mesh axis, so every device holds a different
/// summand and a rule that forgets the pending sum cannot pass), partitioned and run on 2x2 and 2x2x2 meshes,
/// against the unpartitioned program.
/// </summary>
public sealed class OpRuleTests
{
    private const string Dims = "dim i = 4, j = 8, k = 8, l = 4, r = 4, v = 16, jk = 64, k1 = 4, k2 = 4, kk = 16, j2 = 8";

    /// <summary>op -> (parameters "name: type", the expression using x (f32[i, j, k]) and them, integer inputs).</summary>
    public static readonly Dictionary<string, (string[] Params, string Expr, string[] IntInputs)> Cases = new()
    {
        ["add"] = (["z: f32[j, k]"], "add(x, z)", []),
        ["sub"] = (["z: f32[k]"], "sub(x, z)", []),
        ["mul"] = (["z: f32[j, k]"], "mul(x, z)", []),
        ["div"] = (["z: f32[i, k]"], "div(x, exp(z))", []),
        ["maximum"] = (["z: f32[k, j]"], "maximum(x, z)", []),
        ["neg"] = ([], "neg(x)", []),
        ["exp"] = ([], "exp(x)", []),
        ["log"] = ([], "log(exp(x))", []),
        ["rsqrt"] = ([], "rsqrt(exp(x))", []),
        ["sqrt"] = ([], "sqrt(exp(x))", []),
        ["tanh"] = ([], "tanh(x)", []),
        ["sigmoid"] = ([], "sigmoid(x)", []),
        ["silu"] = ([], "silu(x)", []),
        ["square"] = ([], "square(x)", []),
        ["constant"] = ([], "mul(x, constant(value=3))", []),
        ["cast"] = ([], "cast(cast(x, to=bf16), to=f32)", []),
        ["einsum"] = (["w: f32[k, l]"], "einsum(x[i, j, k], w[k, l] -> [i, l, j])", []),
        // Formed after partitioning (PaLM.Passes.CausalBlocks); its query and key stay whole, as causal_softmax's.
        ["causal_einsum"] = (["w: f32[k, l]"], "causal_einsum(x[i, j, k], w[k, l] -> [i, l, j], query=j, key=k, blocks=2)", []),
        // Formed after partitioning too (PaLM.Passes.AttentionEpilogues); the softmax's y is subscripted like the output.
        ["causal_einsum_softmax"] = (["w: f32[k, l]"], "causal_einsum_softmax(x[i, j, k], w[k, l] -> [i, j, l], query=j, key=l, blocks=2)", []),
        ["causal_einsum_softmax_grad"] = (["w: f32[k, l]", "p: f32[i, j, l]"],
            "causal_einsum_softmax_grad(x[i, j, k], w[k, l], p[i, j, l] -> [i, j, l], query=j, key=l, blocks=2)", []),
        ["sum"] = ([], "sum(x, over=[j, k])", []),
        ["mean"] = ([], "mean(x, over=[i, k])", []),
        // The optimizer's fused sums of squares (PaLM.Passes.SquareReductions).
        ["sum_squares"] = ([], "sum_squares(x, over=[j, k])", []),
        ["mean_squares"] = ([], "mean_squares(x, over=[i, k])", []),
        ["max"] = ([], "max(x, over=j)", []),
        ["softmax"] = ([], "softmax(x, over=k)", []),
        // softmax's VJP and the causal softmax (formed after autodiff): the row dim stays whole, like softmax's.
        ["softmax_grad"] = (["z: f32[i, j, k]"], "softmax_grad(z, softmax(x, over=k), over=k)", []),
        ["logsumexp"] = ([], "logsumexp(x, over=j)", []),
        ["reshape"] = ([], "reshape(x, to=[i, jk])", []),
        ["transpose"] = ([], "transpose(x, to=[k, i, j])", []),
        ["split"] = ([], "split(x, along=k, into=[k1, k2])", []),
        ["concat"] = (["z: f32[i, j, kk]"], "concat(x, z, along=[k, kk], as=SUMDIM)", []),
        ["layernorm"] = (["s: f32[k]"], "layernorm(x, s, over=k)", []),
        ["rope"] = ([], "rope(x, seq=j, feature=k)", []),
        ["causal_mask"] = (["z: f32[i, j, j2]"], "causal_mask(add(z, sum(x, over=k)), query=j, key=j2)", []),
        ["causal_softmax"] = (["z: f32[i, j, j2]"], "causal_softmax(add(z, sum(x, over=k)), query=j, key=j2)", []),
        ["gather"] = (["t: f32[v, k]"], "add(gather(t, ids, along=v), x)", ["ids: i32[i, j]"]),
        ["cross_entropy"] = (["t: f32[k, v]"], "cross_entropy(einsum(x[i, j, k], t[k, v] -> [i, j, v]), ids, over=v, z_loss=0.1)", ["ids: i32[i, j]"]),
        // Ops autodiff and the optimizer emit (written here as DSL calls).
        ["minimum"] = (["z: f32[k, j]"], "minimum(x, z)", []),
        ["step"] = ([], "mul(x, step(x))", []),
        ["broadcast"] = (["z: f32[j]"], "add(x, broadcast(z, to=[i, j, k]))", []),
        ["sharding_constraint"] = ([], "sharding_constraint(x)", []),
        ["silu_grad"] = (["z: f32[i, j, k]"], "silu_grad(z, x)", []),
        ["layernorm_dx"] = (["z: f32[i, j, k]", "s: f32[k]"], "layernorm_dx(z, x, s, over=k)", []),
        ["layernorm_dscale"] = (["z: f32[i, j, k]"], "add(x, layernorm_dscale(z, x, over=k))", []),
        ["scatter_add"] = (["z: f32[i, j, k]"], "scatter_add(add(x, z), ids, along=v, to=[v, k])", ["ids: i32[i, j]"]),
        ["cross_entropy_grad"] = (["t: f32[k, v]", "z: f32[i, j]"], "cross_entropy_grad(z, einsum(x[i, j, k], t[k, v] -> [i, j, v]), ids, over=v, z_loss=0.1)", ["ids: i32[i, j]"]),
    };

    [Fact]
    public void EveryOpHasASpmdRuleAndATestCase()
    {
        foreach (var op in OpTable.All)
        {
            var rule = op.Sharding;
            Assert.NotNull(rule);
        }
        // Every op propagation and the partitioner see (a factor rule) has a case here; repeat is covered by palm-tiny,
        // and the collectives exist only after partitioning (tested against direct computation in PaLM.Runtime.Tests).
        var factorOps = OpTable.All.Where(o => o.Name != "repeat" && !IsCollective(o)).Select(o => o.Name).Order(StringComparer.Ordinal);
        Assert.Equal(factorOps, Cases.Keys.Order(StringComparer.Ordinal));
    }

    private static bool IsCollective(OpDef op) => op.Name is "all_gather" or "all_reduce" or "reduce_scatter" or "all_to_all" or "shard_slice";

    public static TheoryData<string, int, bool> Trials()
    {
        var data = new TheoryData<string, int, bool>();
        foreach (var op in Cases.Keys)
        {
            data.Add(op, 1, false);
            data.Add(op, 2, false);
            data.Add(op, 3, true);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Trials))]
    public void PartitionedOpEqualsUnpartitioned(string op, int seed, bool partialOperand)
    {
        var rng = new Random(op.GetHashCode(StringComparison.Ordinal) ^ seed * 7919);
        var (ps, expr, ints) = Cases[op];
        var mesh = seed == 2 ? "mesh p = 2, a = 2, b = 2" : "mesh a = 2, b = 2";
        var axes = seed == 2 ? new[] { "p", "a", "b" } : new[] { "a", "b" };
        var sizes = Dims[4..].Split(',').Select(x => x.Split('=')).ToDictionary(x => x[0].Trim(), x => long.Parse(x[1].Trim(), System.Globalization.CultureInfo.InvariantCulture));
        string Shard(string type)
        {
            var dims = type[(type.IndexOf('[') + 1)..^1].Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
            var per = dims.ToDictionary(d => d, _ => new List<string>());
            foreach (var a in axes.OrderBy(_ => rng.Next()))
            {
                if (rng.NextDouble() < 0.3 || dims.Length == 0) continue;
                var d = dims[rng.Next(dims.Length)];
                if (sizes[d] % (1L << (per[d].Count + 1)) == 0) per[d].Add(a);
            }
            var parts = per.Where(x => x.Value.Count > 0).Select(x => x.Value.Count == 1 ? $"{x.Key}: {x.Value[0]}" : $"{x.Key}: ({string.Join(", ", x.Value)})").ToList();
            return parts.Count == 0 ? "" : $" @shard({string.Join(", ", parts)})";
        }
        var lines = new List<string> { Dims, mesh };
        if (partialOperand)
        {
            // x = sum over r of xa * xb with r split over axis a on both: each device holds a different partial sum.
            lines.Add("param xa: f32[i, j, k, r] = normal(1) @shard(r: a)");
            lines.Add("param xb: f32[r] = normal(1) @shard(r: a)");
            lines.Add("x = einsum(xa[i, j, k, r], xb[r] -> [i, j, k])");
        }
        else lines.Add("param x: f32[i, j, k] = normal(1)" + Shard("f32[i, j, k]"));
        foreach (var p in ps)
        {
            var type = p[(p.IndexOf(':') + 1)..].Trim();
            lines.Add($"param {p} = normal(1){Shard(type)}");
        }
        foreach (var p in ints) lines.Add($"input {p}{Shard(p[(p.IndexOf(':') + 1)..].Trim())}");
        var results = op == "split" ? "y1, y2" : "y";
        lines.Add($"{results} = {expr.Replace("SUMDIM", "sumdim")}");
        if (op == "concat") lines[0] += ", sumdim = 24";
        lines.Add($"output {results}");
        var text = string.Join("\n", lines) + "\n";
        var g = Frontend.CompileText($"{op}.palm", text);

        var intShapes = ints.Select(p => g.Inputs.Single(a => a.Value.Name == p[..p.IndexOf(':')]).Value.Type.Shape).ToArray();
        Tensor[] Inputs()
        {
            var gen = new TorchSharp.torch.Generator(99);
            // Ids index the vocabulary (gather's table rows, cross_entropy's classes).
            return intShapes.Select(s => randint(0, sizes["v"], s, ScalarType.Int32, generator: gen)).ToArray();
        }
        var single = SpmdHarness.RunGlobal(SpmdHarness.Compile(g), 5, Inputs);
        var spmd = SpmdCompiler.Compile(g);
        var parted = SpmdHarness.RunGlobal(SpmdHarness.Compile(spmd.Local), 5, Inputs);
        for (int o = 0; o < single.Length; o++)
        {
            var err = SpmdHarness.RelErr(parted[o], single[o]);
            Assert.True(err <= 1e-5, $"{op} output {o}: relative error {err}\n{text}\n{Printer.Print(spmd.Local)}");
        }
    }
}
