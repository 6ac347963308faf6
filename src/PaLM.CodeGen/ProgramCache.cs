using System.Security.Cryptography;
using System.Text;
using Microsoft.CodeAnalysis.CSharp;
using PaLM.IR;
using PaLM.Runtime;

namespace PaLM.CodeGen;

/// <summary>
/// A persistent compilation cache, as JAX's (<c>jax_compilation_cache_dir</c>): the assemblies Roslyn built for
/// generated programs, kept on disk so that compiling the same program again (another <c>palmc bench</c> or
/// <c>train</c> of the same graph, mesh and options) loads it instead of running Roslyn, which in a fresh process costs
/// 1.6–2.5 s for palm-cpu's training step, nearly all of it Roslyn's own JIT warm-up.
/// <para>
/// The key is the SHA-256 of the generated C# (its tokens and comments, <see cref="GeneratedSource.Fingerprint"/>: the
/// text before layout, so a hit skips laying it out) and of the assemblies it compiles against (PaLM.Runtime's and
/// TorchSharp's module version ids, Roslyn's version): a changed program, a rebuilt runtime or another compiler never
/// hits an old entry. Like JAX (<c>jax_persistent_cache_min_compile_time_secs</c>, default 1 s) only compilations that
/// took at least <see cref="MinCompileSeconds"/> are stored, so tests' many small programs do not fill it; the newest
/// <see cref="MaxEntries"/> entries are kept. Entries are written atomically; one that fails to load is rebuilt.
/// </para>
/// </summary>
public sealed class ProgramCache(string directory, double minCompileSeconds = 1.0, int maxEntries = 64)
{
    public string Directory { get; } = directory;
    public double MinCompileSeconds { get; } = minCompileSeconds;
    public int MaxEntries { get; } = maxEntries;

    /// <summary>The cache under <see cref="CacheDirectory.Root"/>, or null when caching is off.</summary>
    public static ProgramCache? Default => CacheDirectory.Sub("programs") is { } dir ? new ProgramCache(dir) : null;

    private static readonly Lazy<string> s_toolchain = new(() => string.Join("|",
        typeof(IGraphProgram).Assembly.ManifestModule.ModuleVersionId,
        typeof(TorchSharp.torch).Assembly.ManifestModule.ModuleVersionId,
        typeof(CSharpCompilation).Assembly.GetName().Version));

    /// <summary>The entry's key: what the assembly is a function of.</summary>
    public static string Key(GeneratedSource source, string kind)
    {
        var bytes = SHA256.HashData(Encoding.UTF8.GetBytes($"palmc program cache v2\n{kind}\n{s_toolchain.Value}\n{source.FileName}\n{source.Fingerprint}"));
        return Convert.ToHexStringLower(bytes);
    }

    private string DllPath(string key) => Path.Combine(Directory, key + ".dll");
    private string PdbPath(string key) => Path.Combine(Directory, key + ".pdb");

    /// <summary>The stored assembly and symbols for <paramref name="key"/>, or null.</summary>
    public (byte[] Dll, byte[] Pdb)? TryGet(string key)
    {
        try
        {
            var dll = File.ReadAllBytes(DllPath(key));
            var pdb = File.ReadAllBytes(PdbPath(key));
            File.SetLastWriteTimeUtc(DllPath(key), DateTime.UtcNow);     // most recently used, for eviction
            return (dll, pdb);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Stores an assembly that took <paramref name="compileSeconds"/> to build; a cache that cannot be written is skipped.</summary>
    public void Put(string key, byte[] dll, byte[] pdb, double compileSeconds)
    {
        if (compileSeconds < MinCompileSeconds) return;
        try
        {
            // The symbols first: an entry counts once its .dll exists.
            AtomicFile.WriteAllBytes(PdbPath(key), pdb);
            AtomicFile.WriteAllBytes(DllPath(key), dll);
            Evict();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    /// <summary>Forgets <paramref name="key"/> (an entry that failed to load).</summary>
    public void Remove(string key)
    {
        try
        {
            File.Delete(DllPath(key));
            File.Delete(PdbPath(key));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    private void Evict()
    {
        var entries = new DirectoryInfo(Directory).GetFiles("*.dll").OrderByDescending(f => f.LastWriteTimeUtc).Skip(MaxEntries);
        foreach (var f in entries) Remove(Path.GetFileNameWithoutExtension(f.Name));
    }
}
