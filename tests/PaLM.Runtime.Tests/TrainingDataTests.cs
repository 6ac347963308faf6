using PaLM.Runtime.Training;
using TorchSharp;
using static TorchSharp.torch;
using static PaLM.Runtime.Tests.TestUtil;

namespace PaLM.Runtime.Tests;

public sealed class TrainingDataTests
{
    public TrainingDataTests() => Init();

    [Fact]
    public void TokenizerRoundTripsUtf8()
    {
        const string text = "PaLM: naïve café, Größe, 日本語, emoji 🦙.";
        var ids = ByteTokenizer.Encode(text);
        Assert.Equal(System.Text.Encoding.UTF8.GetByteCount(text), ids.Length);
        Assert.All(ids, id => Assert.InRange(id, 0, ByteTokenizer.VocabSize - 1));
        Assert.Equal([0x50, 0x61], ids[..2]);
        Assert.Equal(text, ByteTokenizer.Decode(ids));
        Assert.Equal("", ByteTokenizer.Decode([]));
    }

    [Fact]
    public void DecodeReplacesInvalidInputInsteadOfThrowing()
    {
        var cut = ByteTokenizer.Encode("é")[..1];                         // a lone lead byte
        Assert.Equal("a\uFFFDb", ByteTokenizer.Decode([0x61, .. cut, 0x62]));
        Assert.Equal("a\uFFFD\uFFFDb", ByteTokenizer.Decode([0x61, 0xFF, 0xFE, 0x62]));
        Assert.Equal("a\uFFFDb\uFFFD", ByteTokenizer.Decode([0x61, 300, 0x62, -1]));   // out-of-vocabulary ids
    }

    [Fact]
    public void DefaultCorpusIsEnglishText()
    {
        if (!Directory.Exists(ByteCorpus.DefaultFolder))
        {
            var e = Assert.Throws<DirectoryNotFoundException>(ByteCorpus.Default);
            Assert.Contains(ByteCorpus.DefaultFolder, e.Message);
            Assert.Contains("--data", e.Message);
            return;
        }
        var corpus = ByteCorpus.Default();
        Assert.True(corpus.Length > 100_000, $"only {corpus.Length} bytes");
        Assert.Contains(ByteCorpus.DefaultFolder, corpus.Name);
        var bytes = corpus.Bytes.Span;
        var printable = 0;
        foreach (var b in bytes)
            if (b is >= 0x20 and < 0x7F or (byte)'\n' or (byte)'\t')
                printable++;
        Assert.True(printable > 0.99 * bytes.Length, $"{printable} of {bytes.Length} bytes are printable ASCII");
        var text = ByteTokenizer.Decode(ByteTokenizer.Encode(System.Text.Encoding.UTF8.GetString(bytes)));
        Assert.Contains("GNU GENERAL PUBLIC LICENSE", text);
        Assert.Equal(corpus.Length, ByteCorpus.Default().Length);          // deterministic
    }

    [Fact]
    public void BatchHasShapeDtypeAndShiftedTargets()
    {
        using var scope = Rt.Scope();
        var corpus = Corpus(5000, seed: 1);
        var (tokens, targets) = corpus.Batch(seed: 42, step: 1, batch: 4, seq: 64);
        Assert.Equal([4L, 64L], tokens.shape);
        Assert.Equal([4L, 64L], targets.shape);
        Assert.Equal(ScalarType.Int32, tokens.dtype);
        Assert.Equal(ScalarType.Int32, targets.dtype);
        Assert.Equal(DeviceType.CPU, tokens.device_type);
        Assert.True(Same(tokens.narrow(1, 1, 63), targets.narrow(1, 0, 63)));
        Assert.True(tokens.ge(0).all().item<bool>() && tokens.lt(ByteTokenizer.VocabSize).all().item<bool>());

        // Each row is a window of the corpus: find it and check both tensors against the bytes there.
        var bytes = corpus.Bytes.ToArray();
        var tok = tokens.data<int>().ToArray();
        var tgt = targets.data<int>().ToArray();
        for (var b = 0; b < 4; b++)
        {
            var row = tok.AsSpan(b * 64, 64).ToArray().Select(v => (byte)v).ToArray();
            var offset = bytes.AsSpan().IndexOf(row);
            Assert.True(offset >= 0 && offset <= bytes.Length - 65);
            for (var i = 0; i < 64; i++)
                Assert.Equal(bytes[offset + i + 1], tgt[b * 64 + i]);
        }
    }

    [Fact]
    public void BatchDependsOnlyOnSeedAndStep()
    {
        using var scope = Rt.Scope();
        var corpus = Corpus(10_000, seed: 2);
        var (a, at) = corpus.Batch(7, 3, 8, 32);
        var (b, bt) = corpus.Batch(7, 3, 8, 32);
        Assert.True(Same(a, b) && Same(at, bt));
        Assert.False(Same(a, corpus.Batch(7, 4, 8, 32).Tokens));
        Assert.False(Same(a, corpus.Batch(8, 3, 8, 32).Tokens));

        // Step 7 of a fresh corpus object equals step 7 drawn after steps 1..6 (resuming reproduces the run).
        var fresh = Corpus(10_000, seed: 2).Batch(11, 7, 8, 32).Tokens;
        for (var step = 1; step <= 6; step++)
            corpus.Batch(11, step, 8, 32);
        Assert.True(Same(fresh, corpus.Batch(11, 7, 8, 32).Tokens));
    }

    [Fact]
    public void OffsetsCoverTheWholeCorpus()
    {
        using var scope = Rt.Scope();
        // 0..255 once: every window start is identified by its first byte, and the last legal start is 255 - seq.
        var corpus = ByteCorpus.FromBytes("ramp", Enumerable.Range(0, 256).Select(i => (byte)i).ToArray());
        var firsts = new HashSet<int>();
        for (var step = 0; step < 200; step++)
            foreach (var v in corpus.Batch(1, step, 16, 8).Tokens.narrow(1, 0, 1).data<int>().ToArray())
                firsts.Add(v);
        Assert.Equal(0, firsts.Min());
        Assert.Equal(255 - 8, firsts.Max());
        Assert.Equal(248, firsts.Count);
        // A corpus of exactly seq + 1 bytes has a single window.
        var exact = ByteCorpus.FromBytes("exact", [1, 2, 3]).Batch(0, 0, 2, 2);
        Assert.Equal([1, 2, 1, 2], exact.Tokens.data<int>().ToArray());
        Assert.Equal([2, 3, 2, 3], exact.Targets.data<int>().ToArray());
    }

    [Fact]
    public void TooSmallCorporaAndMissingFilesGiveClearErrors()
    {
        var small = ByteCorpus.FromBytes("tiny", [1, 2, 3, 4, 5]);
        var e = Assert.Throws<ArgumentException>(() => small.Batch(0, 1, 2, 5));
        Assert.Contains("tiny", e.Message);
        Assert.Contains("5 bytes", e.Message);
        Assert.Throws<ArgumentException>(() => ByteCorpus.FromBytes("one", [1]));

        var dir = Path.Combine(Path.GetTempPath(), "palmc-corpus-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var missing = Path.Combine(dir, "nope.txt");
            var nf = Assert.Throws<FileNotFoundException>(() => ByteCorpus.FromFile(missing));
            Assert.Contains(missing, nf.Message);

            var empty = Path.Combine(dir, "empty.txt");
            File.WriteAllBytes(empty, []);
            var ie = Assert.Throws<InvalidDataException>(() => ByteCorpus.FromFile(empty));
            Assert.Contains(empty, ie.Message);
            Assert.Contains("0 byte", ie.Message);

            Assert.Contains(dir, Assert.Throws<InvalidDataException>(() => ByteCorpus.FromFile(dir)).Message);

            var ok = Path.Combine(dir, "ok.txt");
            File.WriteAllText(ok, "hello, corpus");
            var corpus = ByteCorpus.FromFile(ok);
            Assert.Equal(ok, corpus.Name);
            Assert.Equal(13, corpus.Length);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    private static ByteCorpus Corpus(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return ByteCorpus.FromBytes($"random-{seed}", bytes);
    }
}
