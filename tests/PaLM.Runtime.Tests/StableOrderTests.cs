namespace PaLM.Runtime.Tests;

/// <summary><see cref="StableOrder.Descending"/> against LINQ's <c>OrderByDescending(key).ThenBy(index)</c>, which the
/// runtime's memory orders and block dealing used before, on random keys with many ties.</summary>
public sealed class StableOrderTests
{
    [Fact]
    public void OrdersAsLinqDoesTiesIncluded()
    {
        var rng = new Random(5);
        for (int trial = 0; trial < 200; trial++)
        {
            var keys = new long[rng.Next(0, 12)];
            for (int i = 0; i < keys.Length; i++) keys[i] = rng.Next(0, 4) * (rng.Next(2) == 0 ? 1L : long.MaxValue / 8);
            var expected = Enumerable.Range(0, keys.Length).OrderByDescending(i => keys[i]).ThenBy(i => i).ToArray();
            Assert.Equal(expected, StableOrder.Descending(keys));
        }
    }
}
