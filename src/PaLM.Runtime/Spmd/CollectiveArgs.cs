using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>The argument checks every <see cref="ICollectives"/> backend makes, with the same messages.</summary>
internal static class CollectiveArgs
{
    /// <summary><paramref name="dim"/> of <paramref name="x"/>, negative counting from the end; out of range throws.</summary>
    public static long NormalizeDim(Tensor x, long dim, string name)
    {
        long rank = x.dim();
        long d = dim < 0 ? dim + rank : dim;
        if (d < 0 || d >= rank)
            throw new ArgumentOutOfRangeException(name, dim, $"Dimension {dim} is out of range for a tensor of rank {rank}.");
        return d;
    }

    /// <summary>The size of each member's chunk of <paramref name="dim"/>, which the group size must divide.</summary>
    public static long ChunkSize(Tensor x, long dim, int groupSize, string op)
    {
        long n = x.shape[dim];
        if (n % groupSize != 0)
            throw new ArgumentException($"{op}: dimension {dim} of size {n} does not divide into {groupSize} equal chunks.", nameof(x));
        return n / groupSize;
    }
}
