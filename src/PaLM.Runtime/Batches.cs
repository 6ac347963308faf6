using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>Synthetic token batches for running and testing language-model graphs.</summary>
public static class Batches
{
    /// <summary>
    /// Int32 tokens drawn uniformly from [0, <paramref name="vocab"/>) by a generator seeded with <paramref name="seed"/>,
    /// as one [batch, seq+1] stream: tokens are its first <paramref name="seq"/> columns, targets the stream shifted by one.
    /// </summary>
    public static (Tensor tokens, Tensor targets) Random(long seed, long batch, long seq, long vocab)
    {
        using var scope = NewDisposeScope();
        using var g = Rt.NewGenerator(seed);
        var stream = randint(0, vocab, [batch, seq + 1], ScalarType.Int32, generator: g);
        var tokens = stream.narrow(1, 0, seq).contiguous().MoveToOuterDisposeScope();
        var targets = stream.narrow(1, 1, seq).contiguous().MoveToOuterDisposeScope();
        return (tokens, targets);
    }
}
