using System.Text;

namespace PaLM.Tests;

/// <summary>
/// Golden-text checks shared by the test projects: files live in the repository (not the output folder);
/// PALMC_UPDATE_GOLDEN=1 rewrites them after an intended change, to be reviewed as a diff.
/// </summary>
internal static class Golden
{
    /// <summary>Asserts that <paramref name="actual"/> equals the repository file at <paramref name="repoPath"/>.</summary>
    public static void Check(string repoPath, string actual, string what)
    {
        var path = Path.Combine(TestPaths.RepoRoot, repoPath);
        if (Environment.GetEnvironmentVariable("PALMC_UPDATE_GOLDEN") == "1")
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            var tmp = path + ".tmp";
            File.WriteAllText(tmp, actual);
            File.Move(tmp, path, overwrite: true);
            return;
        }
        var expected = File.ReadAllText(path).Replace("\r\n", "\n");
        if (expected != actual)
            Assert.Fail($"{what} differs from {path} (set PALMC_UPDATE_GOLDEN=1 to accept the new text):\n{Diff(expected, actual)}");
    }

    /// <summary>A unified-style excerpt around the first differing line: two lines of context, then up to six lines each side.</summary>
    public static string Diff(string expected, string actual)
    {
        var e = expected.Split('\n');
        var a = actual.Split('\n');
        int i = 0;
        while (i < e.Length && i < a.Length && e[i] == a[i]) i++;
        var sb = new StringBuilder();
        sb.Append("--- expected (golden)\n+++ actual\n");
        sb.Append($"@@ line {i + 1} @@ (expected {e.Length} lines, actual {a.Length})\n");
        for (int k = Math.Max(0, i - 2); k < i; k++) sb.Append(' ').Append(e[k]).Append('\n');
        for (int k = i; k < Math.Min(e.Length, i + 6); k++) sb.Append('-').Append(e[k]).Append('\n');
        for (int k = i; k < Math.Min(a.Length, i + 6); k++) sb.Append('+').Append(a[k]).Append('\n');
        return sb.ToString();
    }
}
