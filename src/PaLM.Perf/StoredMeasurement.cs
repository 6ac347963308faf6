using System.Security.Cryptography;
using System.Text;

namespace PaLM.Perf;

/// <summary>
/// What palmc's stores of this machine's measurements (<see cref="PeakCache"/>, <see cref="GemmTuningCache"/>) share:
/// how long a measurement is trusted, and how a key naming the machine and protocol becomes a file name.
/// </summary>
internal static class StoredMeasurement
{
    /// <summary>A measurement older than this is taken afresh: the machine under a VM, its BLAS or its load may have changed.</summary>
    public static readonly TimeSpan MaxAge = TimeSpan.FromDays(7);

    /// <summary>Measured within <see cref="MaxAge"/> of <paramref name="now"/>, and not later than a few minutes of
    /// clock skew past it (an entry from the future means a clock was wrong).</summary>
    public static bool IsFresh(DateTimeOffset measuredAt, DateTimeOffset now) =>
        now - measuredAt <= MaxAge && measuredAt <= now + TimeSpan.FromMinutes(5);

    /// <summary>The first 16 hex digits of the key's SHA-256: a file name that changes whenever the key does.</summary>
    public static string Hash(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)))[..16];
}
