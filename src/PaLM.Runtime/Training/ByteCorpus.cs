using System.Text;
using TorchSharp;

namespace PaLM.Runtime.Training;

/// <summary>
/// Byte-level tokenizer: PaLM's SentencePiece vocabulary falls back to UTF-8 bytes; ours is only that fallback,
/// so a token is a byte value and the vocabulary has 256 entries.
/// </summary>
public static class ByteTokenizer
{
    /// <summary>The number of distinct tokens (one per byte value).</summary>
    public const int VocabSize = 256;

    /// <summary>The UTF-8 bytes of <paramref name="text"/>, one token per byte.</summary>
    public static int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var bytes = Encoding.UTF8.GetBytes(text);
        var ids = new int[bytes.Length];
        for (var i = 0; i < bytes.Length; i++)
            ids[i] = bytes[i];
        return ids;
    }

    /// <summary>
    /// Decodes token ids as UTF-8. Never throws: invalid UTF-8 sequences and ids outside [0, 256)
    /// (a model may sample anything) become U+FFFD replacement characters.
    /// </summary>
    public static string Decode(ReadOnlySpan<int> ids)
    {
        // Encoding.UTF8 replaces invalid sequences rather than throwing (its decoder fallback is the replacement one).
        var sb = new StringBuilder(ids.Length);
        var run = new byte[ids.Length];
        var n = 0;
        foreach (var id in ids)
        {
            if ((uint)id < VocabSize)
            {
                run[n++] = (byte)id;
                continue;
            }
            sb.Append(Encoding.UTF8.GetString(run, 0, n));
            n = 0;
            sb.Append('\uFFFD');
        }
        sb.Append(Encoding.UTF8.GetString(run, 0, n));
        return sb.ToString();
    }
}

/// <summary>
/// A training corpus held as raw bytes, cut into seeded random windows of byte tokens.
/// </summary>
public sealed class ByteCorpus
{
    /// <summary>The folder <see cref="Default"/> reads (licence texts from Debian's base-files package).</summary>
    public const string DefaultFolder = "/usr/share/common-licenses";

    /// <summary>The fewest bytes a corpus may hold: below two there is not even one (token, target) pair.</summary>
    public const int MinimumLength = 2;

    private readonly byte[] _bytes;

    private ByteCorpus(string name, byte[] bytes)
    {
        Name = name;
        _bytes = bytes;
    }

    /// <summary>The file path or a description of where the bytes came from, for logs.</summary>
    public string Name { get; }

    /// <summary>The corpus size in bytes (= tokens).</summary>
    public long Length => _bytes.LongLength;

    /// <summary>The corpus bytes (read-only).</summary>
    public ReadOnlyMemory<byte> Bytes => _bytes;

    /// <summary>
    /// Reads a whole file as the corpus. Throws <see cref="FileNotFoundException"/> when it does not exist and
    /// <see cref="InvalidDataException"/> (naming the path and the reason) when it cannot be read, is too large
    /// or holds fewer than <see cref="MinimumLength"/> bytes.
    /// </summary>
    public static ByteCorpus FromFile(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (Directory.Exists(path))
            throw new InvalidDataException($"Training data '{path}' is a folder; pass a file.");
        if (!File.Exists(path))
            throw new FileNotFoundException($"Training data file '{path}' does not exist.", path);
        byte[] bytes;
        try
        {
            var length = new FileInfo(path).Length;
            if (length > Array.MaxLength)
                throw new InvalidDataException($"Training data file '{path}' is {length} bytes; at most {Array.MaxLength} are supported.");
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidDataException($"Cannot read training data file '{path}': {e.Message}", e);
        }
        if (bytes.Length < MinimumLength)
            throw new InvalidDataException(
                $"Training data file '{path}' holds {bytes.Length} byte(s); at least {MinimumLength} are needed (and sequence length + 1 to train).");
        return new ByteCorpus(path, bytes);
    }

    /// <summary>
    /// A corpus over a copy of <paramref name="bytes"/>, called <paramref name="name"/> in logs.
    /// Throws <see cref="ArgumentException"/> for fewer than <see cref="MinimumLength"/> bytes.
    /// </summary>
    public static ByteCorpus FromBytes(string name, byte[] bytes)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(bytes);
        if (bytes.Length < MinimumLength)
            throw new ArgumentException(
                $"Corpus '{name}' holds {bytes.Length} byte(s); at least {MinimumLength} are needed.", nameof(bytes));
        return new ByteCorpus(name, (byte[])bytes.Clone());   // a copy: later changes by the caller must not alter batches
    }

    /// <summary>
    /// The default corpus: real English text present on every Debian system. Every regular file in
    /// <see cref="DefaultFolder"/> (GPL, LGPL, Apache, MPL, GFDL... about 240 KB), in ordinal name order,
    /// symbolic links skipped (GPL -> GPL-3 and the like would duplicate text), joined with a blank line.
    /// Throws <see cref="DirectoryNotFoundException"/> naming the folder when it is absent.
    /// </summary>
    public static ByteCorpus Default()
    {
        if (!Directory.Exists(DefaultFolder))
            throw new DirectoryNotFoundException(
                $"The default training corpus folder '{DefaultFolder}' does not exist (it comes with Debian's base-files package); " +
                "pass a text file with --data PATH.");
        var files = new DirectoryInfo(DefaultFolder).EnumerateFiles()
            .Where(f => f.LinkTarget is null)
            .OrderBy(f => f.Name, StringComparer.Ordinal)
            .ToList();
        if (files.Count == 0)
            throw new InvalidDataException($"The default training corpus folder '{DefaultFolder}' holds no files; pass a text file with --data PATH.");

        using var buffer = new MemoryStream();
        foreach (var f in files)
        {
            if (buffer.Length > 0)
                buffer.Write("\n\n"u8);
            try
            {
                buffer.Write(File.ReadAllBytes(f.FullName));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new InvalidDataException($"Cannot read '{f.FullName}' of the default training corpus: {e.Message}; pass a text file with --data PATH.", e);
            }
        }
        return new ByteCorpus($"{DefaultFolder} ({files.Count} files)", buffer.ToArray());
    }

    /// <summary>
    /// The batch for training step <paramref name="step"/>: <paramref name="batch"/> windows of
    /// <paramref name="seq"/> + 1 bytes at offsets drawn uniformly from [0, Length - seq - 1] by a generator seeded
    /// from (<paramref name="seed"/>, <paramref name="step"/>) only, so a step's batch never depends on earlier calls
    /// (resuming at step k reproduces an uninterrupted run). Tokens are window[0, seq), targets window[1, seq];
    /// both Int32 CPU tensors [batch, seq]. Throws <see cref="ArgumentException"/> when Length &lt; seq + 1.
    /// </summary>
    public (torch.Tensor Tokens, torch.Tensor Targets) Batch(long seed, long step, long batch, long seq)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1L);
        ArgumentOutOfRangeException.ThrowIfLessThan(seq, 1L);
        if (Length < seq + 1)
            throw new ArgumentException(
                $"Corpus '{Name}' holds {Length} bytes; a sequence of {seq} tokens needs at least {seq + 1}.", nameof(seq));
        if (batch > Array.MaxLength / seq)
            throw new ArgumentOutOfRangeException(nameof(batch), $"A batch of {batch} x {seq} tokens does not fit in one array.");

        var rng = new SplitMix64(seed, step);
        var count = (ulong)(Length - seq);               // offsets 0 .. Length - seq - 1
        var s = (int)seq;
        var tokens = new int[batch * seq];
        var targets = new int[batch * seq];
        for (var b = 0; b < batch; b++)
        {
            var window = _bytes.AsSpan((int)rng.NextBelow(count), s + 1);
            var row = b * s;
            for (var i = 0; i < s; i++)
            {
                tokens[row + i] = window[i];
                targets[row + i] = window[i + 1];
            }
        }
        long[] shape = [batch, seq];
        return (torch.tensor(tokens, shape, torch.ScalarType.Int32), torch.tensor(targets, shape, torch.ScalarType.Int32));
    }

    /// <summary>
    /// SplitMix64 (Steele, Lea, Flood 2014), seeded by hashing seed and step. Our own generator rather than
    /// System.Random: its sequence is fixed by this code alone (not by a runtime version) and is easy to
    /// reproduce elsewhere, e.g. in a Python reference: state = mix(mix(seed) + step); each draw adds the
    /// golden gamma to state and returns mix(state).
    /// </summary>
    private struct SplitMix64
    {
        private const ulong Gamma = 0x9E3779B97F4A7C15UL;
        private ulong _state;

        public SplitMix64(long seed, long step) => _state = Mix(Mix((ulong)seed) + (ulong)step);

        private static ulong Mix(ulong z)
        {
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }

        public ulong Next()
        {
            _state += Gamma;
            return Mix(_state);
        }

        /// <summary>Uniform in [0, n): rejects the lowest 2^64 mod n draws so every residue is equally likely.</summary>
        public ulong NextBelow(ulong n)
        {
            var threshold = (0UL - n) % n;
            ulong r;
            do
                r = Next();
            while (r < threshold);
            return r % n;
        }
    }
}
