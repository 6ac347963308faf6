using PaLM.Dsl;
using PaLM.IR;
using PaLM.Runtime;

namespace PaLM.Spmd.Tests;

/// <summary>
/// palm-tiny's loss, partitioned over many meshes and annotation sets and run on in-process virtual devices, equals the
/// unpartitioned program's (fp32, 1e-5 relative). Annotation variants are made by editing a copy of the architecture.
/// </summary>
public sealed class PalmTinyPartitionTests
{
    private static readonly Lazy<double> s_single = new(() =>
        ProgramHost.ScalarOutputs(SpmdHarness.Compile(Frontend.CompileFile(TestPaths.Graph("palm-tiny"))), 3, [0])[0]);

    /// <summary>palm-tiny with the architecture's annotations rewritten by <paramref name="edit"/>, in a temp folder.</summary>
    internal static Graph TinyWith(Func<string, string> edit)
    {
        var dir = Directory.CreateTempSubdirectory("palm-spmd-");
        Directory.CreateDirectory(Path.Combine(dir.FullName, "arch"));
        File.WriteAllText(Path.Combine(dir.FullName, "arch", "palm.palm"), edit(File.ReadAllText(Path.Combine(TestPaths.Graphs, "arch", "palm.palm"))));
        var top = Path.Combine(dir.FullName, "palm-tiny.palm");
        File.WriteAllText(top, File.ReadAllText(TestPaths.Graph("palm-tiny")));
        try { return Frontend.CompileFile(top); }
        finally { dir.Delete(true); }
    }

    private const string ShardPattern = @"\s*@shard\((?:[^()]|\([^()]*\))*\)";

    private static string NoAnnotations(string s) => System.Text.RegularExpressions.Regex.Replace(s, ShardPattern, "");

    public static TheoryData<string, string> Configs => new()
    {
        { "paper", "data=1,model=1" },
        { "paper", "data=2,model=1" },
        { "paper", "data=1,model=2" },
        { "paper", "data=2,model=2" },
        { "paper", "data=4,model=2" },
        { "paper", "data=2,model=4" },
        { "paper", "data=8,model=1" },
        { "paper", "pod=2,data=2,model=2" },
        { "paper", "model=2,data=2" },
        { "megatron", "data=2,model=4" },
        { "batch-only", "pod=2,data=4" },
        { "heads-over-data", "data=2,model=2" },
        { "logits-vocab-model", "data=2,model=2" },
        { "fsdp-over-pod-data", "pod=2,data=2,model=2" },
    };

    private static Graph Variant(string name) => name switch
    {
        "paper" => Frontend.CompileFile(TestPaths.Graph("palm-tiny")),
        // Megatron tensor parallelism alone: weights split over model only, replicated over data.
        "megatron" => TinyWith(s => s.Replace("d_model: data, ", "").Replace(", d_model: data", "").Replace("@shard(d_model: data)", "")),
        "batch-only" => TinyWith(s => NoAnnotations(s).Replace("input tokens: i32[batch, seq]", "input tokens: i32[batch, seq] @shard(batch: (pod, data))")),
        "heads-over-data" => TinyWith(s => s.Replace("@shard(d_model: data, heads: model)", "@shard(heads: data)").Replace("@shard(heads: model, d_model: data)", "@shard(heads: data)")),
        "logits-vocab-model" => TinyWith(s => s.Replace("logits = einsum(y[batch, seq, d_model], embed[vocab, d_model] -> [batch, seq, vocab]) * rsqrt(d_model)",
            "logits = mul(einsum(y[batch, seq, d_model], embed[vocab, d_model] -> [batch, seq, vocab]), rsqrt(d_model)) @shard(vocab: model)")),
        "fsdp-over-pod-data" => TinyWith(s => s.Replace("d_model: data", "d_model: (pod, data)")),
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(Configs))]
    public void PartitionedLossEqualsSingleDevice(string annotations, string mesh)
    {
        var g = Variant(annotations);
        var spmd = SpmdCompiler.Compile(g, Mesh.Parse(mesh));
        var loss = ProgramHost.ScalarOutputs(SpmdHarness.Compile(spmd.Local), 3, [0])[0];
        Assert.True(Math.Abs(loss - s_single.Value) <= 1e-5 * Math.Abs(s_single.Value),
            $"{annotations} on {mesh}: partitioned {loss:R} vs single {s_single.Value:R}\n{string.Join("\n", spmd.Collectives.Select(ShardingPlan.FormatCollective))}");
    }

    [Fact]
    public void TheLogitsAnnotationIsHonoured()
    {
        var plan = ShardingPlan.Of(SpmdCompiler.Compile(Variant("logits-vocab-model"), Mesh.Parse("data=2,model=2")));
        Assert.Equal("{vocab:model}", plan.Tensors.Single(t => t.Name == "logits").ShardingText);
        Assert.Equal("annotation", plan.Tensors.Single(t => t.Name == "logits").Origin);
    }

    /// <summary>Random valid annotations on every parameter and input (seeded), random meshes: loss unchanged.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void RandomAnnotationsKeepTheLoss(int seed)
    {
        var rng = new Random(seed);
        var meshes = new[] { "data=2,model=2", "pod=2,data=2,model=2", "data=4,model=2", "data=2,model=4" };
        var meshText = meshes[rng.Next(meshes.Length)];
        var mesh = Mesh.Parse(meshText);
        var g0 = Frontend.CompileFile(TestPaths.Graph("palm-tiny"));
        var sizes = g0.Dims.ToDictionary(d => d.Name, d => d.Size);
        // Rewrite every @shard(...) and add one to unannotated params: each mesh axis goes to a random divisible dim or none.
        string Annotate(string decl)
        {
            var m = System.Text.RegularExpressions.Regex.Match(decl, @"\[(?<dims>[^\]]*)\]");
            var dims = m.Groups["dims"].Value.Split(',', StringSplitOptions.TrimEntries);
            var per = dims.ToDictionary(d => d, _ => new List<string>());
            foreach (var axis in mesh.Axes.OrderBy(_ => rng.Next()))
            {
                if (rng.NextDouble() < 0.35) continue;
                var d = dims[rng.Next(dims.Length)];
                var prod = per[d].Aggregate(1L, (p, a) => p * mesh.SizeOf(a)) * axis.Size;
                if (sizes[d] % prod == 0) per[d].Add(axis.Name);
            }
            var parts = per.Where(p => p.Value.Count > 0).Select(p => p.Value.Count == 1 ? $"{p.Key}: {p.Value[0]}" : $"{p.Key}: ({string.Join(", ", p.Value)})");
            return parts.Any() ? $" @shard({string.Join(", ", parts)})" : "";
        }
        var g = TinyWith(src => string.Join("\n", src.Split('\n').Select(line =>
        {
            var l = System.Text.RegularExpressions.Regex.Replace(line, ShardPattern, "");
            if (!System.Text.RegularExpressions.Regex.IsMatch(l, @"^\s*(param|input) ")) return l;
            var comment = l.IndexOf('#');
            var code = comment >= 0 ? l[..comment] : l;
            return code.TrimEnd() + Annotate(code);
        })));
        var spmd = SpmdCompiler.Compile(g, mesh);
        var loss = ProgramHost.ScalarOutputs(SpmdHarness.Compile(spmd.Local), 3, [0])[0];
        var layouts = string.Join("\n", ShardingPlan.Of(spmd).Tensors.Where(t => t.Kind != "activation").Select(t => $"{t.Name} {t.ShardingText}"));
        Assert.True(Math.Abs(loss - s_single.Value) <= 1e-5 * Math.Abs(s_single.Value),
            $"seed {seed} on {meshText}: partitioned {loss:R} vs single {s_single.Value:R}\n{layouts}");
    }
}
