namespace PaLM.Runtime;

/// <summary>
/// Orders by decreasing key, ties in index order (as <c>OrderByDescending(key).ThenBy(index)</c>), without LINQ's
/// garbage: the runtime sorts a handful of dims, labels or blocks on every call (memory orders, block dealing).
/// </summary>
internal static class StableOrder
{
    /// <summary>The indices of <paramref name="keys"/> from the largest key to the smallest; equal keys keep their order.</summary>
    public static int[] Descending(ReadOnlySpan<long> keys)
    {
        var order = new int[keys.Length];
        for (int i = 0; i < order.Length; i++)
        {
            // Insertion sort: an index moves before earlier ones only past a strictly smaller key.
            int j = i;
            for (; j > 0 && keys[order[j - 1]] < keys[i]; j--) order[j] = order[j - 1];
            order[j] = i;
        }
        return order;
    }
}
