using PaLM.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PaLM.Reference;

/// <summary>Sizes of a PaLM model.</summary>
public sealed record PalmConfig(long Vocab, long DModel, long Heads, long HeadDim, long DFF, long Layers, double Eps = 1e-6, double ZLoss = 1e-4);

/// <summary>
/// A hand-written eager PaLM in plain TorchSharp, independent of the compiler and of <c>PaLM.Runtime.Rt</c>:
/// parallel attention + SwiGLU MLP blocks, multi-query attention, RoPE, bias-free layer norms, no biases,
/// input embedding shared with the output projection (logits scaled by 1/√d_model), and
/// loss = mean cross-entropy + z_loss · mean(logsumexp²).
/// Its parameters are created outside any dispose scope and are owned (and disposed) by the module.
/// </summary>
public sealed class PalmModel : nn.Module<Tensor, Tensor>
{
    /// <summary>The weight names, in the order of the compiler's PaLM graph; layer weights are stacked on a leading layer dim.</summary>
    public static readonly IReadOnlyList<string> WeightNames =
        ["embed", "ln", "w_q", "w_k", "w_v", "w_o", "w_gate", "w_up", "w_down", "ln_final"];

    // Field names are the state_dict keys (RegisterComponents uses them).
    private readonly Parameter embed;
    private readonly ModuleList<ParallelLayer> layers;
    private readonly Parameter ln_final;

    /// <summary>Builds the model from stacked weights (see <see cref="WeightNames"/>); the tensors are copied.</summary>
    public PalmModel(PalmConfig config, IReadOnlyDictionary<string, Tensor> weights) : base(nameof(PalmModel))
    {
        Config = config;
        var c = config;
        foreach (var (name, shape) in Shapes(c))
        {
            if (!weights.TryGetValue(name, out var w))
                throw new ArgumentException($"Missing weight '{name}'.", nameof(weights));
            if (!w.shape.SequenceEqual(shape))
                throw new ArgumentException($"Weight '{name}' has shape [{string.Join(", ", w.shape)}], expected [{string.Join(", ", shape)}].", nameof(weights));
        }
        embed = NewParameter(weights["embed"]);
        ln_final = NewParameter(weights["ln_final"]);
        layers = nn.ModuleList(Enumerable.Range(0, (int)c.Layers)
            .Select(l => new ParallelLayer(c, name =>
            {
                using var slice = weights[name].select(0, l);
                return NewParameter(slice);
            }))
            .ToArray());
        RegisterComponents();
    }

    /// <summary>The model's sizes.</summary>
    public PalmConfig Config { get; }

    /// <summary>Logits [B, S, vocab] for int tokens [B, S].</summary>
    public override Tensor forward(Tensor tokens)
    {
        using var scope = NewDisposeScope();
        var x = embed.index_select(0, tokens.reshape(-1).to_type(ScalarType.Int64))
            .reshape(tokens.shape[0], tokens.shape[1], Config.DModel);
        foreach (var layer in layers)
            x = layer.call(x);
        x = LayerNorm(x, ln_final, Config.Eps);
        return x.matmul(embed.t()).div(HeldScalars.Constant(Math.Sqrt(Config.DModel))).MoveToOuterDisposeScope();
    }

    /// <summary>Scalar loss: mean cross-entropy of predicting <paramref name="targets"/> + z_loss · mean(logsumexp(logits)²).</summary>
    public Tensor Loss(Tensor tokens, Tensor targets)
    {
        using var scope = NewDisposeScope();
        var logits = forward(tokens).reshape(-1, Config.Vocab);
        var ce = F.cross_entropy(logits, targets.reshape(-1).to_type(ScalarType.Int64));
        var lse = torch.logsumexp(logits, 1);
        var z = lse.mul(lse).mean();          // x·x, not square(): TorchSharp's square() races with the GC (see Rt.Square)
        return ce.add(z.mul(HeldScalars.Constant(Config.ZLoss)), HeldScalars.One).MoveToOuterDisposeScope();
    }

    /// <summary>Detached copies of the weights, stacked over layers like the input dictionary.</summary>
    public Dictionary<string, Tensor> Weights() => Stacked(p =>
    {
        using var data = p.detach();
        return data.clone();
    });

    /// <summary>The weights' gradients after <c>backward()</c>, stacked like <see cref="Weights"/> (zeros where none).</summary>
    public Dictionary<string, Tensor> Gradients() => Stacked(p => p.grad is { } g ? g.clone() : zeros_like(p));

    /// <summary>Every weight's expected shape, by name.</summary>
    public static IEnumerable<(string Name, long[] Shape)> Shapes(PalmConfig c)
    {
        long l = c.Layers, d = c.DModel, h = c.Heads, k = c.HeadDim, f = c.DFF;
        yield return ("embed", [c.Vocab, d]);
        yield return ("ln", [l, d]);
        yield return ("w_q", [l, d, h, k]);
        yield return ("w_k", [l, d, k]);
        yield return ("w_v", [l, d, k]);
        yield return ("w_o", [l, h, k, d]);
        yield return ("w_gate", [l, d, f]);
        yield return ("w_up", [l, d, f]);
        yield return ("w_down", [l, f, d]);
        yield return ("ln_final", [d]);
    }

    /// <summary>
    /// Random fp32 weights for tests: matrices ~ N(0, std²), layer-norm scales 1 + N(0, std²), from one seeded generator
    /// (in <see cref="Shapes"/> order). The caller owns the tensors.
    /// </summary>
    public static Dictionary<string, Tensor> RandomWeights(PalmConfig c, long seed, double std = 0.02)
    {
        using var scope = NewDisposeScope();
        using var g = new Generator((ulong)seed);
        var result = new Dictionary<string, Tensor>();
        foreach (var (name, shape) in Shapes(c))
        {
            var w = randn(shape, ScalarType.Float32, generator: g).mul(HeldScalars.Constant(std));
            result[name] = (name.StartsWith("ln", StringComparison.Ordinal) ? w.add(HeldScalars.Constant(1.0), HeldScalars.One) : w).MoveToOuterDisposeScope();
        }
        return result;
    }

    /// <summary>Bias-free layer norm over the last axis, written out: (x - mean)/√(biased var + eps) · scale.</summary>
    internal static Tensor LayerNorm(Tensor x, Tensor scale, double eps)
    {
        using var scope = NewDisposeScope();
        var centered = x.sub(x.mean([-1], keepdim: true));
        var variance = centered.mul(centered).mean([-1], keepdim: true);
        return centered.div(variance.add(HeldScalars.Constant(eps), HeldScalars.One).sqrt()).mul(scale).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Rotary embedding of x [B, S, ..., K] (positions along dim 1, features last), HF style in fp32:
    /// x·cos + rotate_half(x)·sin with angles s / 10000^(2i/K) repeated over both halves.
    /// </summary>
    internal static Tensor Rotary(Tensor x)
    {
        using var scope = NewDisposeScope();
        long s = x.shape[1], k = x.shape[^1];
        var invFreq = ones(1).div(tensor(10000f).pow(arange(HeldScalars.Constant(0), HeldScalars.Constant(k), HeldScalars.Constant(2), ScalarType.Float32).div(HeldScalars.Constant(k))));
        var freqs = outer(arange(HeldScalars.Constant(0), HeldScalars.Constant(s), HeldScalars.One, ScalarType.Float32), invFreq);
        var emb = cat([freqs, freqs], -1);
        var view = Enumerable.Repeat(1L, (int)x.dim()).ToArray();
        view[1] = s;
        view[^1] = k;
        var cos = emb.cos().to_type(x.dtype).reshape(view);
        var sin = emb.sin().to_type(x.dtype).reshape(view);
        var x1 = x.narrow(-1, 0, k / 2);
        var x2 = x.narrow(-1, k / 2, k / 2);
        var rotated = cat([x2.neg(), x1], -1);
        return x.mul(cos).add(rotated.mul(sin), HeldScalars.One).MoveToOuterDisposeScope();
    }

    private Dictionary<string, Tensor> Stacked(Func<Parameter, Tensor> get)
    {
        var result = new Dictionary<string, Tensor> { ["embed"] = get(embed) };
        foreach (var name in WeightNames.Where(n => n is not ("embed" or "ln_final")))
        {
            var perLayer = layers.Select(layer => get(layer.Weight(name))).ToList();
            result[name] = stack(perLayer);
            foreach (var t in perLayer)
                t.Dispose();
        }
        result["ln_final"] = get(ln_final);
        return result;
    }

    private static Parameter NewParameter(Tensor source)
    {
        using var data = source.detach();
        var p = new Parameter(data.clone(), requires_grad: true);
        p.DetachFromDisposeScope();
        return p;
    }
}

/// <summary>One PaLM block: x + attention(LN(x)) + SwiGLU-MLP(LN(x)), the two branches sharing one layer norm.</summary>
internal sealed class ParallelLayer : nn.Module<Tensor, Tensor>
{
    private readonly PalmConfig config;
    private readonly Parameter ln, w_q, w_k, w_v, w_o, w_gate, w_up, w_down;

    public ParallelLayer(PalmConfig config, Func<string, Parameter> weight) : base(nameof(ParallelLayer))
    {
        this.config = config;
        ln = weight("ln");
        w_q = weight("w_q");
        w_k = weight("w_k");
        w_v = weight("w_v");
        w_o = weight("w_o");
        w_gate = weight("w_gate");
        w_up = weight("w_up");
        w_down = weight("w_down");
        RegisterComponents();
    }

    public Parameter Weight(string name) => name switch
    {
        "ln" => ln,
        "w_q" => w_q,
        "w_k" => w_k,
        "w_v" => w_v,
        "w_o" => w_o,
        "w_gate" => w_gate,
        "w_up" => w_up,
        "w_down" => w_down,
        _ => throw new ArgumentException($"No layer weight '{name}'.", nameof(name)),
    };

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], s = x.shape[1], d = config.DModel, heads = config.Heads, k = config.HeadDim;
        var h = PalmModel.LayerNorm(x, ln, config.Eps);

        // Multi-query attention: H query heads share one key/value head.
        var q = PalmModel.Rotary(h.matmul(w_q.reshape(d, heads * k)).reshape(b, s, heads, k)).permute(0, 2, 1, 3);
        var key = PalmModel.Rotary(h.matmul(w_k)).unsqueeze(1).expand(b, heads, s, k);
        var value = h.matmul(w_v).unsqueeze(1).expand(b, heads, s, k);
        var attn = F.scaled_dot_product_attention(q, key, value, is_casual: true);            // [B, H, S, K]
        var attnOut = attn.permute(0, 2, 1, 3).reshape(b, s, heads * k).matmul(w_o.reshape(heads * k, d));

        var mlp = F.silu(h.matmul(w_gate)).mul(h.matmul(w_up)).matmul(w_down);
        return x.add(attnOut, HeldScalars.One).add(mlp, HeldScalars.One).MoveToOuterDisposeScope();
    }
}
