using TorchSharp;

namespace PaLM.Runtime;

/// <summary>
/// Scalars for TorchSharp calls that stay alive until this holder is disposed.
/// <para>
/// Why: TorchSharp 0.107 turns a <c>double</c> argument (<c>t.mul_(0.9)</c>, <c>linalg.vector_norm(t)</c>'s order) into
/// a temporary Scalar and passes only its handle to the native call, so nothing keeps the Scalar alive during that call:
/// a garbage collection started by another thread can finalize it mid-call, and libtorch then fails with "Expected
/// false to be true" from Scalar.h (seen in CI in <c>square()</c>, in <c>linalg.vector_norm</c> and in <c>add_</c>, whose
/// overload without an alpha makes a temporary Scalar 1). A Scalar made here is referenced by the holder until the
/// holder is disposed (or, for <see cref="One"/> and <see cref="Constant"/>, by the process), so it outlives every call
/// it is passed to.
/// </para>
/// </summary>
public sealed class HeldScalars : IDisposable
{
    // Keyed by the bits, so that -0.0 and +0.0 (equal as doubles) keep their own Scalars.
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<long, Scalar> s_constants = new();

    /// <summary>
    /// The integer Scalar 1, alive for the whole process: pass it as the <c>alpha</c> of <c>add</c> and <c>add_</c>, whose
    /// overloads without one make a temporary Scalar 1 for every call (a CI run failed in <c>add_</c> so, under four
    /// in-process devices). An integer, so that it scales integer tensors too.
    /// </summary>
    public static Scalar One { get; } = 1.ToScalar();

    /// <summary>A Scalar of <paramref name="value"/> alive for the whole process, one per distinct value: for the few
    /// constants a program or a model uses on every step (epsilons, z-loss weights, fills).</summary>
    public static Scalar Constant(double value) => s_constants.GetOrAdd(BitConverter.DoubleToInt64Bits(value), bits => BitConverter.Int64BitsToDouble(bits).ToScalar());

    private readonly List<Scalar> _held = [];

    /// <summary>A Scalar of <paramref name="value"/> that lives until this holder is disposed.</summary>
    public Scalar this[double value]
    {
        get
        {
            var s = value.ToScalar();
            _held.Add(s);
            return s;
        }
    }

    public void Dispose()
    {
        foreach (var s in _held) s.Dispose();
        _held.Clear();
    }
}
