using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

internal static class TestUtil
{
    /// <summary>Loads TorchSharp once for the test process (2 threads: the CI machine has 2 cores).</summary>
    public static void Init() => Rt.Initialize(2);

    public static Tensor Randn(long seed, params long[] shape)
    {
        using var g = new Generator((ulong)seed);
        return randn(shape, ScalarType.Float32, generator: g);
    }

    public static void AssertClose(Tensor expected, Tensor actual, double rtol = 1e-5, double atol = 1e-6)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var e = expected.to_type(ScalarType.Float64);
        using var a = actual.to_type(ScalarType.Float64);
        if (!e.allclose(a, rtol, atol, equal_nan: true))
        {
            using var diff = e.sub(a).abs().nan_to_num();
            Assert.Fail($"Tensors differ: max |diff| = {diff.max().item<double>():G6}");
        }
    }

    public static float[] Values(Tensor t) => t.contiguous().to_type(ScalarType.Float32).data<float>().ToArray();
}
