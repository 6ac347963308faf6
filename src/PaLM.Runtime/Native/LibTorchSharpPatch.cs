// One file, two compilations: part of PaLM.Runtime (PALM_RUNTIME defined), and the source of the MSBuild
// inline task in build/TorchSharpNative.targets (RoslynCodeTaskFactory compiles it against netstandard 2.0,
// so this file sticks to netstandard 2.0 APIs and explicit usings).
#nullable enable
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace PaLM.Runtime.Native
{
    /// <summary>
    /// Makes TorchSharp's <c>libLibTorchSharp.so</c> load against an older libstdc++ (e.g. Debian 12's, which ends at
    /// GLIBCXX_3.4.30). The library asks for GLIBCXX_3.4.32 only for <c>std::ios_base_library_init()</c>, a link-time
    /// marker that is never called, so marking that version requirement weak (VER_FLG_WEAK in its Elf64_Vernaux)
    /// lets the dynamic loader accept the library. Files are replaced, never written in place: output folders
    /// hard-link to the NuGet cache, which must stay untouched.
    /// </summary>
    public static class LibTorchSharpPatch
    {
        /// <summary>The file name of TorchSharp's native glue library.</summary>
        public const string LibraryName = "libLibTorchSharp.so";

        /// <summary>The libstdc++ symbol version the library requires but only needs at link time.</summary>
        public const string Version = "GLIBCXX_3.4.32";

        private const uint ShtGnuVerdef = 0x6ffffffd;
        private const uint ShtGnuVerneed = 0x6ffffffe;
        private const ushort VerFlgWeak = 0x2;

        private static readonly string[] s_libDirs =
        {
            "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
            "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
        };

        private static readonly object s_lock = new object();
        private static bool? s_systemHasVersion;

        /// <summary>
        /// Whether the libstdc++.so.6 the dynamic loader would pick defines <paramref name="version"/>
        /// (searched in LD_LIBRARY_PATH, then /etc/ld.so.cache, then the usual library folders).
        /// False when no libstdc++ is found, or on a non-Linux system.
        /// </summary>
        public static bool SystemLibStdCxxHasVersion(string version)
        {
            var path = FindSystemLibStdCxx();
            return path != null && DefinesVersion(File.ReadAllBytes(path), version);
        }

        /// <summary>
        /// Patches every <c>libLibTorchSharp.so</c> under <paramref name="dir"/> (recursively) that needs it.
        /// A no-op when the folder has none, or when this machine's libstdc++ has <see cref="Version"/>.
        /// </summary>
        /// <returns>How many files were changed.</returns>
        public static int PatchDirectory(string dir)
        {
            if (!Directory.Exists(dir))
                return 0;
            var changed = 0;
            foreach (var file in Directory.EnumerateFiles(dir, LibraryName, SearchOption.AllDirectories))
            {
                if (PatchFile(file))
                    changed++;
            }
            return changed;
        }

        /// <summary>
        /// Marks the <see cref="Version"/> requirement of <paramref name="path"/> weak, if this machine's libstdc++
        /// lacks that version and the file is not already patched. The patched bytes go to a new file that replaces
        /// the original by rename (atomic; breaks any hard link to the NuGet cache).
        /// </summary>
        /// <returns>True if the file was changed; false if it already was patched or needs no patch.</returns>
        public static bool PatchFile(string path)
        {
            if (SystemHasVersionCached())
                return false;
            return PatchFileUnconditionally(path);
        }

        /// <summary>
        /// Whether <paramref name="path"/> still has a non-weak requirement on <see cref="Version"/> that this
        /// machine's libstdc++ cannot satisfy, i.e. whether loading it would fail.
        /// </summary>
        public static bool NeedsPatch(string path) =>
            !SystemHasVersionCached() && FindStrongRequirement(File.ReadAllBytes(path), Version) >= 0;

        /// <summary>
        /// <see cref="PatchFile"/> without the libstdc++ check (for tests, and for preparing files for another
        /// machine). Idempotent.
        /// </summary>
        public static bool PatchFileUnconditionally(string path)
        {
            var bytes = File.ReadAllBytes(path);
            var flagsOffset = FindStrongRequirement(bytes, Version);
            if (flagsOffset < 0)
                return false;

            // File.Copy keeps the file mode; then change the two flag bytes of the copy and rename it over.
            var tmp = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".",
                "." + Path.GetFileName(path) + "." + Guid.NewGuid().ToString("N") + ".tmp");
            try
            {
                File.Copy(path, tmp, overwrite: false);
                var flags = (ushort)(ReadU16(bytes, flagsOffset) | VerFlgWeak);
                using (var fs = new FileStream(tmp, FileMode.Open, FileAccess.Write, FileShare.None))
                {
                    fs.Position = flagsOffset;
                    fs.WriteByte((byte)flags);
                    fs.WriteByte((byte)(flags >> 8));
                }
                // Keep the original's time stamp: MSBuild's incremental copy (same size and time) then leaves the
                // patched file alone on the next build instead of linking the original back in.
                File.SetLastWriteTimeUtc(tmp, File.GetLastWriteTimeUtc(path));
                // On Unix this is rename(2): atomic, and it replaces the directory entry rather than the inode.
                File.Replace(tmp, path, destinationBackupFileName: null);
            }
            finally
            {
                if (File.Exists(tmp))
                    File.Delete(tmp);
            }
            return true;
        }

        /// <summary>
        /// The file offset of <c>vna_flags</c> of the Elf64_Vernaux that requires <paramref name="version"/> without
        /// VER_FLG_WEAK, or -1 if there is none (absent, already weak, or not an ELF64 little-endian file).
        /// </summary>
        public static long FindStrongRequirement(byte[] elf, string version)
        {
            var sections = Sections(elf);
            foreach (var s in sections)
            {
                if (s.Type != ShtGnuVerneed || s.Link >= sections.Count)
                    continue;
                var strtab = sections[(int)s.Link];
                // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32.
                var need = s.Offset;
                for (var i = 0; i < (long)s.Info && need + 16 <= elf.LongLength; i++)
                {
                    var count = ReadU16(elf, need + 2);
                    // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32.
                    var aux = need + ReadU32(elf, need + 8);
                    for (var j = 0; j < count && aux + 16 <= elf.LongLength; j++)
                    {
                        if (StringAt(elf, strtab, ReadU32(elf, aux + 8)) == version)
                            return (ReadU16(elf, aux + 4) & VerFlgWeak) != 0 ? -1 : aux + 4;
                        var nextAux = ReadU32(elf, aux + 12);
                        if (nextAux == 0)
                            break;
                        aux += nextAux;
                    }
                    var nextNeed = ReadU32(elf, need + 12);
                    if (nextNeed == 0)
                        break;
                    need += nextNeed;
                }
            }
            return -1;
        }

        /// <summary>Whether the ELF shared library <paramref name="elf"/> defines symbol version <paramref name="version"/>.</summary>
        public static bool DefinesVersion(byte[] elf, string version)
        {
            var sections = Sections(elf);
            foreach (var s in sections)
            {
                if (s.Type != ShtGnuVerdef || s.Link >= sections.Count)
                    continue;
                var strtab = sections[(int)s.Link];
                // Elf64_Verdef: vd_version u16, vd_flags u16, vd_ndx u16, vd_cnt u16, vd_hash u32, vd_aux u32, vd_next u32.
                var def = s.Offset;
                for (var i = 0; i < (long)s.Info && def + 20 <= elf.LongLength; i++)
                {
                    // The first Elf64_Verdaux (vda_name u32, vda_next u32) names the version itself.
                    var aux = def + ReadU32(elf, def + 12);
                    if (aux + 8 <= elf.LongLength && StringAt(elf, strtab, ReadU32(elf, aux)) == version)
                        return true;
                    var next = ReadU32(elf, def + 16);
                    if (next == 0)
                        break;
                    def += next;
                }
                return false;
            }
            // No version definitions we could parse: fall back to the string itself in the file.
            return sections.Count == 0 && ContainsCString(elf, version);
        }

        private static bool SystemHasVersionCached()
        {
            lock (s_lock)
                return s_systemHasVersion ??= SystemLibStdCxxHasVersion(Version);
        }

        private static string? FindSystemLibStdCxx()
        {
            const string name = "libstdc++.so.6";
            var candidates = new List<string>();
            var ldPath = Environment.GetEnvironmentVariable("LD_LIBRARY_PATH");
            if (!string.IsNullOrEmpty(ldPath))
            {
                foreach (var dir in ldPath!.Split(':'))
                {
                    if (dir.Length > 0)
                        candidates.Add(Path.Combine(dir, name));
                }
            }
            candidates.AddRange(LdSoCacheEntries(name));
            foreach (var dir in s_libDirs)
                candidates.Add(Path.Combine(dir, name));
            foreach (var c in candidates)
            {
                if (File.Exists(c) && IsElf64(c))
                    return c;
            }
            return null;
        }

        // The paths /etc/ld.so.cache maps a soname to, in cache order (the format glibc 2.32+ writes:
        // "glibc-ld.so.cache1.1", then entries of flags i32, key u32, value u32, osversion u32, hwcap u64).
        private static IEnumerable<string> LdSoCacheEntries(string soname)
        {
            byte[] cache;
            try
            {
                cache = File.ReadAllBytes("/etc/ld.so.cache");
            }
            catch (Exception e) when (e is IOException || e is UnauthorizedAccessException)
            {
                yield break;
            }
            const string magic = "glibc-ld.so.cache1.1";
            var start = IndexOf(cache, Encoding.ASCII.GetBytes(magic));
            if (start < 0 || start + 48 > cache.Length)
                yield break;
            var count = ReadU32(cache, start + 20);
            for (long i = 0, e = start + 48; i < count && e + 24 <= cache.Length; i++, e += 24)
            {
                var flags = ReadU32(cache, e);
                // Flag 0x0300 is FLAG_X8664_LIB64; keep other architectures' entries out on x86-64.
                if (IntPtr.Size == 8 && (flags & 0xff00) != 0 && (flags & 0xff00) != 0x0300 && (flags & 0xff00) != 0x0a00)
                    continue;
                var value = StringAtAbsolute(cache, start + ReadU32(cache, e + 8));
                if (value != null && StringAtAbsolute(cache, start + ReadU32(cache, e + 4)) == soname)
                    yield return value;
            }
        }

        private static bool IsElf64(string path)
        {
            var head = new byte[6];
            using (var fs = File.OpenRead(path))
            {
                if (fs.Read(head, 0, head.Length) != head.Length)
                    return false;
            }
            return head[0] == 0x7f && head[1] == (byte)'E' && head[2] == (byte)'L' && head[3] == (byte)'F'
                && head[4] == 2 && head[5] == 1;
        }

        private readonly struct Section
        {
            public Section(uint type, long offset, long size, uint link, uint info)
            {
                Type = type;
                Offset = offset;
                Size = size;
                Link = link;
                Info = info;
            }

            public uint Type { get; }
            public long Offset { get; }
            public long Size { get; }
            public uint Link { get; }
            public uint Info { get; }
        }

        // Section headers of an ELF64 little-endian file; empty for anything else.
        private static List<Section> Sections(byte[] elf)
        {
            var result = new List<Section>();
            if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F'
                || elf[4] != 2 /* ELFCLASS64 */ || elf[5] != 1 /* ELFDATA2LSB */)
                return result;
            var shoff = (long)ReadU64(elf, 0x28);
            var shentsize = ReadU16(elf, 0x3a);
            long shnum = ReadU16(elf, 0x3c);
            if (shoff <= 0 || shentsize < 64 || shoff + 64 > elf.LongLength)
                return result;
            if (shnum == 0)
                shnum = (long)ReadU64(elf, shoff + 0x20); // more than 0xff00 sections: the count is in section 0's sh_size
            for (long i = 0; i < shnum; i++)
            {
                var h = shoff + i * shentsize;
                if (h + 64 > elf.LongLength)
                    break;
                // Elf64_Shdr: sh_name u32, sh_type u32, sh_flags u64, sh_addr u64, sh_offset u64, sh_size u64,
                // sh_link u32, sh_info u32, sh_addralign u64, sh_entsize u64.
                result.Add(new Section(ReadU32(elf, h + 4), (long)ReadU64(elf, h + 0x18), (long)ReadU64(elf, h + 0x20),
                    ReadU32(elf, h + 0x28), ReadU32(elf, h + 0x2c)));
            }
            return result;
        }

        private static string? StringAt(byte[] elf, Section strtab, uint offset) =>
            offset < strtab.Size ? StringAtAbsolute(elf, strtab.Offset + offset) : null;

        private static string? StringAtAbsolute(byte[] b, long start)
        {
            if (start < 0 || start >= b.LongLength)
                return null;
            var end = start;
            while (end < b.LongLength && b[end] != 0)
                end++;
            return Encoding.ASCII.GetString(b, (int)start, (int)(end - start));
        }

        private static bool ContainsCString(byte[] b, string s)
        {
            var needle = Encoding.ASCII.GetBytes("\0" + s + "\0");
            return IndexOf(b, needle) >= 0;
        }

        private static int IndexOf(byte[] haystack, byte[] needle)
        {
            for (var i = 0; i + needle.Length <= haystack.Length; i++)
            {
                var j = 0;
                while (j < needle.Length && haystack[i + j] == needle[j])
                    j++;
                if (j == needle.Length)
                    return i;
            }
            return -1;
        }

        private static ushort ReadU16(byte[] b, long o) => (ushort)(b[o] | b[o + 1] << 8);

        private static uint ReadU32(byte[] b, long o) => (uint)(b[o] | b[o + 1] << 8 | b[o + 2] << 16 | b[o + 3] << 24);

        private static ulong ReadU64(byte[] b, long o) => ReadU32(b, o) | (ulong)ReadU32(b, o + 4) << 32;
    }

#if !PALM_RUNTIME
    /// <summary>MSBuild task: patches every libLibTorchSharp.so under <see cref="Directory"/> that needs it.</summary>
    public sealed class PatchLibTorchSharp : Microsoft.Build.Utilities.Task
    {
        /// <summary>The output folder to search (recursively).</summary>
        [Microsoft.Build.Framework.Required]
        public string Directory { get; set; } = "";

        /// <inheritdoc />
        public override bool Execute()
        {
            try
            {
                var changed = LibTorchSharpPatch.PatchDirectory(Directory);
                if (changed > 0)
                {
                    Log.LogMessage(Microsoft.Build.Framework.MessageImportance.High,
                        "Marked " + LibTorchSharpPatch.Version + " weak in " + changed + " " + LibTorchSharpPatch.LibraryName
                        + " under " + Path.GetFullPath(Directory) + " (this machine's libstdc++ lacks it).");
                }
                return true;
            }
            catch (Exception e) when (e is IOException || e is UnauthorizedAccessException)
            {
                Log.LogError("Could not patch " + LibTorchSharpPatch.LibraryName + " under " + Directory + ": " + e.Message);
                return false;
            }
        }
    }
#endif
}
