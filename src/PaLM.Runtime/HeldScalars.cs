using TorchSharp;

namespace PaLM.Runtime;

/// <summary>
/// Scalars for TorchSharp calls that stay alive until this holder is disposed.
/// <para>
/// Why: TorchSharp 0.107 turns a <c>double</c> argument (<c>t.mul_(0.9)</c>, <c>linalg.vector_norm(t)</c>'s order) into
/// a temporary Scalar and passes only its handle to the native call, so nothing keeps the Scalar alive during that call:
/// a garbage collection started by another thread can finalize it mid-call, and libtorch then fails with "Expected
/// false to be true" from Scalar.h (seen in CI in <c>square()</c> and in <c>linalg.vector_norm</c>). A Scalar made here
/// is referenced by the holder until the holder is disposed, so it outlives every call it is passed to.
/// </para>
/// </summary>
public sealed class HeldScalars : IDisposable
{
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
