using PaLM.Runtime;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PaLM.Reference;

/// <summary>
/// PaLM's optimizer as the compiler's training step implements it (<c>PaLM.Passes.TrainOptions</c>, same defaults):
/// unfactored Adafactor with parameter scaling, global-norm gradient clipping, update clipping, momentum and
/// decoupled weight decay of lr^power.
/// </summary>
public sealed record EagerOptimizerOptions
{
    /// <summary>The learning rate is min(PeakLearningRate, 1/sqrt(step)).</summary>
    public double PeakLearningRate { get; init; } = 1e-2;

    /// <summary>First-moment decay, applied to the clipped update.</summary>
    public double Beta1 { get; init; } = 0.9;

    /// <summary>beta2 = 1 - step^-Beta2Decay.</summary>
    public double Beta2Decay { get; init; } = 0.8;

    /// <summary>Global-norm gradient clipping threshold (0 disables).</summary>
    public double ClipNorm { get; init; } = 1.0;

    /// <summary>Cap on the RMS of each weight matrix's update (0 disables).</summary>
    public double UpdateClip { get; init; } = 1.0;

    /// <summary>Added to squared gradients.</summary>
    public double Epsilon1 { get; init; } = 1e-30;

    /// <summary>Floor of the parameter RMS in parameter scaling.</summary>
    public double Epsilon2 { get; init; } = 1e-3;

    /// <summary>Decoupled weight decay of lr^WeightDecayPower per step; negative disables.</summary>
    public double WeightDecayPower { get; init; } = 2.0;
}

/// <summary>What one eager training step reports: the loss, the global gradient norm before clipping, and the learning rate.</summary>
public sealed record EagerStepResult(double Loss, double GradNorm, double LearningRate);

/// <summary>
/// The training step a TorchSharp user writes by hand, the benchmark peer of the compiler's generated step: the eager
/// <see cref="PalmModel"/> loss, autograd <c>backward()</c>, then the optimizer of <see cref="EagerOptimizerOptions"/>
/// in place on the parameters and on persistent moments under <c>no_grad</c>. Each layer's weights are their own
/// <see cref="Parameter"/>, so every RMS taken over one parameter is the per-matrix RMS the compiler takes per layer of
/// a stacked weight.
/// </summary>
public sealed class EagerTrainer : IDisposable
{
    private readonly EagerOptimizerOptions options;
    private readonly Parameter[] parameters;
    private readonly Tensor[] m, v;
    private readonly double[] invSqrtNumel;
    private bool disposed;

    /// <summary>A trainer starting from stacked <paramref name="weights"/> named as <see cref="PalmModel.WeightNames"/> (copied) with zero moments.</summary>
    public EagerTrainer(PalmConfig config, IReadOnlyDictionary<string, Tensor> weights, EagerOptimizerOptions? options = null)
    {
        this.options = options ?? new EagerOptimizerOptions();
        Model = new PalmModel(config, weights);
        parameters = Model.parameters().ToArray();
        m = parameters.Select(NewState).ToArray();
        v = parameters.Select(NewState).ToArray();
        invSqrtNumel = parameters.Select(p => 1 / Math.Sqrt(p.numel())).ToArray();
    }

    /// <summary>The model being trained (its parameters are updated in place).</summary>
    public PalmModel Model { get; }

    /// <summary>
    /// One training step on int32 <paramref name="tokens"/> and <paramref name="targets"/> [B, S];
    /// <paramref name="step"/> counts from 1 (the schedules depend on it).
    /// </summary>
    public EagerStepResult Step(Tensor tokens, Tensor targets, long step)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        ArgumentOutOfRangeException.ThrowIfLessThan(step, 1L);
        var o = options;
        using var scope = NewDisposeScope();
        // Every scalar argument goes through a held Scalar: TorchSharp's temporary ones can be finalized mid-call (HeldScalars).
        using var s = new HeldScalars();
        var loss = Model.Loss(tokens, targets);
        loss.backward();

        var lr = Math.Min(o.PeakLearningRate, 1 / Math.Sqrt(step));
        var beta2 = 1 - Math.Pow(step, -o.Beta2Decay);
        var decay = o.WeightDecayPower >= 0 ? Math.Pow(lr, o.WeightDecayPower) : 0;
        using (no_grad())
        {
            var grads = parameters.Select(p => p.grad ?? zeros_like(p)).ToArray();
            // The global norm as clip_grad_norm_ takes it: one norm per tensor, then their norm (no gradient-sized temporaries).
            var gradNorm = (double)stack(grads.Select(g => g.norm())).norm().item<float>();
            // Read once (it is reported anyway), the clip factor is a plain scalar folded into the ops below
            // instead of a pass that scales every gradient.
            var clip = o.ClipNorm > 0 ? o.ClipNorm / Math.Max(gradNorm, o.ClipNorm) : 1.0;
            for (int i = 0; i < parameters.Length; i++)
            {
                var (p, g, mi, vi) = (parameters[i], grads[i], m[i], v[i]);
                // v = beta2 v + (1 - beta2)(g² + eps1), with g = clip · G.
                vi.mul_(s[beta2]).addcmul_(g, g, s[(1 - beta2) * clip * clip]).add_(s[(1 - beta2) * o.Epsilon1], HeldScalars.One);
                // u = g / sqrt(v) = clip · r with r = G / sqrt(v): the one temporary, freed before the next parameter.
                using var r = vi.rsqrt().mul_(g);
                // m = beta1 m + (1 - beta1) u / max(1, RMS(u) / d); the clip divisor stays a 0-dim tensor (no sync per parameter).
                if (o.UpdateClip > 0)
                {
                    using var den = r.norm().mul_(s[clip * invSqrtNumel[i] / o.UpdateClip]).clamp_min_(s[1]);
                    mi.mul_(s[o.Beta1]).addcdiv_(r, den, s[(1 - o.Beta1) * clip]);
                }
                else
                    mi.mul_(s[o.Beta1]).add_(r, s[(1 - o.Beta1) * clip]);
                // Parameter scaling from the RMS of the old weights: W = W (1 - lr^power) - m · lr · max(eps2, RMS(W)).
                using var stepSize = p.norm().mul_(s[invSqrtNumel[i]]).clamp_min_(s[o.Epsilon2]).mul_(s[lr]);
                if (decay != 0) p.mul_(s[1 - decay]);
                p.addcmul_(mi, stepSize, s[-1]);
                // Cheaper than zeroing: the next backward hands its gradient buffers over instead of accumulating into zeros.
                p.grad = null;
            }
            return new EagerStepResult(loss.item<float>(), gradNorm, lr);
        }
    }

    /// <summary>Copies of the current weights, stacked over layers as <see cref="PalmModel.Weights"/> (the caller disposes them).</summary>
    public Dictionary<string, Tensor> Weights()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        return Model.Weights();
    }

    /// <summary>Frees the model and the optimizer state.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        foreach (var t in m.Concat(v))
            t.Dispose();
        Model.Dispose();
    }

    // Persistent state must not belong to whatever dispose scope the caller has open.
    private static Tensor NewState(Parameter p)
    {
        var state = zeros_like(p);
        state.DetachFromDisposeScope();
        return state;
    }
}
