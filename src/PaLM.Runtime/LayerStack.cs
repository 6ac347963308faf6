using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>
/// A layer loop's per-layer result kept as one tensor per layer instead of copied into a stacked buffer: what the
/// forward pass saves for the backward one (activations, attention probabilities), which only the backward loop reads,
/// one layer at a time. XLA writes such results in place into the stacked buffer (dynamic-update-slice in a while
/// loop); here the per-layer tensor is simply kept, so saving costs no copy at all, and the backward loop can free each
/// layer's tensors as soon as it has used them (<see cref="Take"/>), so saved activations shrink as the backward runs.
/// <para>
/// Code generation decides which results qualify (<c>PaLM.CodeGen.LayerStacks</c>): only those whose every reader is
/// another layer loop slicing them per layer, and it copies a value whose buffer the iteration does not own.
/// </para>
/// </summary>
public sealed class LayerStack
{
    private readonly Tensor?[] _layers;

    public LayerStack(long count) => _layers = new Tensor?[count];

    /// <summary>Layers in the stack.</summary>
    public long Count => _layers.Length;

    /// <summary>Keeps <paramref name="value"/> as layer <paramref name="index"/>: a new handle to its buffer that
    /// outlives the iteration's dispose scope (the iteration's own handle is freed with the scope as usual).</summary>
    internal void Set(long index, Tensor value)
    {
        var kept = value.alias().MoveToOuterDisposeScope();
        var old = _layers[index];
        _layers[index] = kept;
        old?.Dispose();
    }

    /// <summary>Layer <paramref name="index"/> under a new handle owned by the caller's dispose scope; the stack keeps it.</summary>
    internal Tensor Get(long index) => Stored(index).alias();

    /// <summary>Layer <paramref name="index"/> under a new handle owned by the caller's dispose scope; the stack lets go
    /// of it, so its buffer is freed when that scope ends (unless something made from it lives on).</summary>
    internal Tensor Take(long index)
    {
        var stored = Stored(index);
        _layers[index] = null;
        var taken = stored.alias();
        stored.Dispose();
        return taken;
    }

    private Tensor Stored(long index) =>
        _layers[index] ?? throw new InvalidOperationException($"layer {index} of a layer stack was read before it was set, or after it was taken");
}
