namespace PaLM.IR;

/// <summary>
/// Where palmc keeps what it can reuse across runs (compiled programs, this machine's measured matmul peak):
/// <c>$PALMC_CACHE_DIR</c>, else <c>$XDG_CACHE_HOME/palmc</c>, else <c>~/.cache/palmc</c>. Setting
/// <c>PALMC_CACHE_DIR=off</c> turns every cache off. Entries are written atomically and a damaged one is rebuilt, so
/// deleting the folder at any time is safe.
/// </summary>
public static class CacheDirectory
{
    public const string Variable = "PALMC_CACHE_DIR";

    /// <summary>The cache root, or null when caching is off (or no home folder is known).</summary>
    public static string? Root
    {
        get
        {
            var dir = Environment.GetEnvironmentVariable(Variable);
            if (dir is "off" or "0" or "none") return null;
            if (!string.IsNullOrEmpty(dir)) return Path.GetFullPath(dir);
            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            if (!string.IsNullOrEmpty(xdg)) return Path.Combine(xdg, "palmc");
            var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
            return string.IsNullOrEmpty(home) ? null : Path.Combine(home, ".cache", "palmc");
        }
    }

    /// <summary>The folder <paramref name="name"/> under <paramref name="root"/> (default: <see cref="Root"/>), or null when caching is off.</summary>
    public static string? Sub(string name, string? root = null) => (root ?? Root) is { } r ? Path.Combine(r, name) : null;
}
