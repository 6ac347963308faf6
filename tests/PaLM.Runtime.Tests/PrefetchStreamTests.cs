using PaLM.Runtime;

namespace PaLM.Runtime.Tests;

/// <summary>
/// The fused loops' prefetch streams (<see cref="PrefetchStream"/>): for an input walked as rows with gaps, element i's
/// prefetch lands <see cref="PrefetchStream.Distance"/> elements ahead in the thread's walk, the next chunk's elements
/// once past the current one's end; dense inputs get none. Prefetches change no result, so this is the only thing about
/// them a test can check: that they point where the loads will go.
/// </summary>
public sealed unsafe class PrefetchStreamTests
{
    [Theory]
    [InlineData(3072, 7040, 2, 0, 3, 0)]        // SwiGLU's gate: rows of 3072 in a [*, 7040] product, next row after
    [InlineData(3072, 7040, 5, 0, -1, 0)]       // the thread's last chunk
    [InlineData(300, 1000, 1, 0, 2, 0)]         // a chunk shorter than the distance: every prefetch is in the next one
    [InlineData(40000, 40100, 0, 16384, 0, 32768)] // chunks within one long row
    public void AStridedInputsPrefetchesPointWhereItsLoadsWillGo(int columns, int rowStride, long row, long column, long nextRow, long nextColumn)
    {
        if (!System.Runtime.Intrinsics.X86.Sse.IsSupported) return;
        int length = (int)Math.Min(FusedLoop.ChunkElements, columns - column);
        var op = new RowOperand((nint)0x10000000, rowStride);
        float* start = op.At(row, column);
        var p = PrefetchStream.For(op, start, length, columns, nextRow, nextColumn);
        Assert.True(p.On);
        for (int i = 0; i < length; i += 16)
        {
            float* at = i < p.Wrap ? p.Near + i : p.Far + i;
            long ahead = i + PrefetchStream.Distance;
            if (ahead < length) Assert.True(at == start + ahead, $"element {i}: within the chunk");
            else if (nextRow >= 0) Assert.True(at == op.At(nextRow, nextColumn) + (ahead - length), $"element {i}: into the next chunk");
        }
    }

    [Fact]
    public void DenseInputsAndRowsWithoutGapsGetNoPrefetch()
    {
        var dense = new RowOperand((nint)0x10000000, 0);
        Assert.False(PrefetchStream.For(dense, dense.At(0, 0), 1000, 1000, -1, 0).On);
        var gapless = new RowOperand((nint)0x10000000, 3072);
        Assert.False(PrefetchStream.For(gapless, gapless.At(1, 0), 3072, 3072, 2, 0).On);
    }
}
