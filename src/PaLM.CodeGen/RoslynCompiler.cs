using System.Reflection;
using System.Runtime.Loader;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using Microsoft.CodeAnalysis.Emit;
using PaLM.Runtime;

namespace PaLM.CodeGen;

/// <summary>Generated code that did not compile: a palmc bug, reported with the compiler's messages.</summary>
public sealed class CodeGenException(string message) : Exception(message);

/// <summary>Compiles generated C# with Roslyn: in memory (loaded into this process) or to an assembly on disk.</summary>
public static class RoslynCompiler
{
    private static readonly Lazy<IReadOnlyList<MetadataReference>> s_references = new(BuildReferences);

    /// <summary>
    /// The framework's trusted platform assemblies plus TorchSharp and the runtime facade; built once per process
    /// (120-200 ms otherwise).
    /// </summary>
    private static IReadOnlyList<MetadataReference> BuildReferences()
    {
        var paths = ((string?)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") ?? "")
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Where(p => Path.GetFileName(p).StartsWith("System.", StringComparison.Ordinal)
                || Path.GetFileName(p) is "mscorlib.dll" or "netstandard.dll" or "Microsoft.Win32.Primitives.dll")
            .ToHashSet(StringComparer.Ordinal);
        paths.Add(typeof(TorchSharp.torch).Assembly.Location);
        paths.Add(typeof(IGraphProgram).Assembly.Location);
        return paths.Select(p => (MetadataReference)MetadataReference.CreateFromFile(p)).ToList();
    }

    private static CSharpCompilation Compilation(CompilationUnitSyntax unit, string fileName, string assemblyName, OutputKind kind, string? mainType = null)
    {
        var tree = CSharpSyntaxTree.Create(unit, new CSharpParseOptions(LanguageVersion.Latest), fileName, System.Text.Encoding.UTF8);
        return CSharpCompilation.Create(assemblyName, new[] { tree }, s_references.Value,
            new CSharpCompilationOptions(kind, optimizationLevel: OptimizationLevel.Release, nullableContextOptions: NullableContextOptions.Enable,
                mainTypeName: kind == OutputKind.ConsoleApplication ? mainType : null));
    }

    private static (byte[] Dll, byte[] Pdb) EmitBytes(GeneratedSource source, string assemblyName, OutputKind kind)
    {
        var result = Emit(Compilation(source.Syntax, source.FileName, assemblyName, kind, source.FullClassName), source.FileName, source.Text, CancellationToken.None);
        if (!result.Result.Success)
        {
            var errors = result.Result.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error).Take(10).Select(d => d.ToString());
            throw new CodeGenException("generated C# did not compile (a palmc bug):\n" + string.Join("\n", errors));
        }
        return (result.Dll, result.Pdb);
    }

    private static (EmitResult Result, byte[] Dll, byte[] Pdb) Emit(CSharpCompilation compilation, string fileName, string text, CancellationToken cancel)
    {
        using var dll = new MemoryStream();
        using var pdb = new MemoryStream();
        // Embedded source + portable PDB: stack traces and debuggers show the generated file and line.
        var result = compilation.Emit(dll, pdb,
            embeddedTexts: new[] { EmbeddedText.FromSource(fileName, Microsoft.CodeAnalysis.Text.SourceText.From(text, System.Text.Encoding.UTF8)) },
            options: new EmitOptions(debugInformationFormat: DebugInformationFormat.PortablePdb), cancellationToken: cancel);
        return (result, dll.ToArray(), pdb.ToArray());
    }

    private static readonly object s_warmLock = new();
    private static Thread? s_warmUp;
    private static CancellationTokenSource? s_warmCancel;

    /// <summary>
    /// Starts, once per process, compiling a small program (<see cref="WarmUpSource"/>) on a background thread with the
    /// references and options the graphs' programs get, so that Roslyn's own code is JIT-compiled and the references are
    /// read while the caller transforms its graph on another core. Callers start it after parsing: started before, it
    /// slowed parsing itself (0.20 → 0.29–0.37 s for palm-cpu, the two threads loading and JIT-compiling at once) and so
    /// every run, also those the cache answers. Started after parsing, `palmc bench graphs/palm-cpu.palm` with Roslyn
    /// cold spent 2.19–2.34 s compiling against 2.76–2.95 s, and the same with the cache warm.
    /// <para>
    /// The thread runs at the lowest priority (nice 19 on Linux), so it takes only what the caller leaves idle. The first
    /// compile or cache hit after it cancels it and waits for it to stop (at its next check, or at once if it has not
    /// started): left to itself on a loaded machine, a starved warm-up went on reading references and compiling during
    /// the timed steps (resident memory grew 40 MB over a 500-step bench whose program came from the cache).
    /// </para>
    /// </summary>
    public static void WarmUp()
    {
        lock (s_warmLock)
        {
            if (s_warmUp is not null) return;
            s_warmCancel = new CancellationTokenSource();
            var token = s_warmCancel.Token;
            s_warmUp = new Thread(() =>
            {
                LowestPriority.ForThisThread();
                try { CompileWarmUp(token); }
                catch (OperationCanceledException) { }
            }) { IsBackground = true, Name = "palmc Roslyn warm-up", Priority = ThreadPriority.Lowest };
            s_warmUp.Start();
        }
    }

    /// <summary>Whether a warm-up thread is still running (for the tests: none may outlive a compile or a cache hit).</summary>
    internal static bool WarmUpRunning
    {
        get { lock (s_warmLock) return s_warmUp is { IsAlive: true }; }
    }

    /// <summary>Cancels a warm-up still running and waits for it to stop: it has nothing left to give once a program is
    /// compiled or loaded, and nothing should run beside what the caller does next (a peak check, timed steps).</summary>
    private static void EndWarmUp()
    {
        Thread? warmUp;
        lock (s_warmLock)
        {
            s_warmCancel?.Cancel();
            warmUp = s_warmUp;
        }
        warmUp?.Join();
    }

    /// <summary>Compiles <see cref="WarmUpSource"/> as <see cref="WarmUp"/> does (the tests check it compiles).</summary>
    internal static EmitResult CompileWarmUp(CancellationToken cancel)
    {
        // Checked between the steps Roslyn does not check itself: reading the references maps a few hundred files.
        cancel.ThrowIfCancellationRequested();
        var unit = SyntaxFactory.ParseCompilationUnit(WarmUpSource);
        cancel.ThrowIfCancellationRequested();
        var compilation = Compilation(unit, "warmup.cs", "palmc.warmup", OutputKind.DynamicallyLinkedLibrary);
        return Emit(compilation, "warmup.cs", WarmUpSource, cancel).Result;
    }

    /// <summary>What a generated program is made of, in small: a class over the runtime and TorchSharp with arrays,
    /// lambdas, loops and a switch.</summary>
    internal const string WarmUpSource = """
        using System;
        using System.Linq;
        using PaLM.Runtime;
        using TorchSharp;
        using static TorchSharp.torch;

        namespace PalmcWarmUp;

        public sealed class Program
        {
            public Tensor[] Forward(DeviceContext device, Tensor[] parameters, Tensor[] inputs)
            {
                using var scope = Rt.Scope();
                var x = Rt.Reshape(inputs[0], new long[] { 2L, 3L });
                var sites = new string[] { "a", "b" }.Select(s => s.Length).ToArray();
                for (long i = 0; i < 2L; i++)
                {
                    var y = Rt.Einsum("ab,bc->ac", new Tensor[] { x, parameters[(int)i] });
                    x = sites[i] switch { 1 => Rt.Add(x, y), _ => y };
                }
                return new Tensor[] { Rt.Keep(x) };
            }
        }
        """;

    /// <summary>
    /// Compiles and loads into this process; returns a new instance of the graph's program. The assembly comes from
    /// the persistent <see cref="ProgramCache"/> when it holds this program (<see cref="ProgramCache.Default"/> unless
    /// given; null: no cache).
    /// </summary>
    public static IGraphProgram CompileInMemory(GeneratedSource source) => CompileInMemory(source, ProgramCache.Default, out _);

    /// <summary>As above, with the cache to use and whether the assembly came from it.</summary>
    public static IGraphProgram CompileInMemory(GeneratedSource source, ProgramCache? cache, out bool fromCache)
    {
        var key = ProgramCache.Key(source, "library");
        // The assembly name is the key: each program loads into its own context, so a program compiled twice (or
        // loaded from the cache and compiled again) never clashes with itself.
        var name = $"palmc.{source.ClassName}.{key[..16]}";
        if (cache?.TryGet(key) is { } hit)
        {
            EndWarmUp();
            try
            {
                fromCache = true;
                return Load(hit.Dll, hit.Pdb, name, source);
            }
            catch (Exception e) when (e is BadImageFormatException or FileLoadException or CodeGenException or InvalidCastException)
            {
                cache.Remove(key);      // damaged or foreign: rebuilt below
            }
        }
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var (dll, pdb) = EmitBytes(source, name, OutputKind.DynamicallyLinkedLibrary);
        EndWarmUp();
        cache?.Put(key, dll, pdb, sw.Elapsed.TotalSeconds);
        fromCache = false;
        return Load(dll, pdb, name, source);
    }

    private static IGraphProgram Load(byte[] dll, byte[] pdb, string name, GeneratedSource source)
    {
        // Dependencies (PaLM.Runtime, TorchSharp) resolve from the default context, so the program's types are shared.
        var context = new AssemblyLoadContext(name);
        var asm = context.LoadFromStream(new MemoryStream(dll), new MemoryStream(pdb));
        return Instantiate(asm, source);
    }

    /// <summary>Compiles to <paramref name="dllPath"/> (with a .pdb beside it) as a console program.</summary>
    public static void CompileToFile(GeneratedSource source, string dllPath)
    {
        var (dll, pdb) = EmitBytes(source, Path.GetFileNameWithoutExtension(dllPath), OutputKind.ConsoleApplication);
        EndWarmUp();
        IR.AtomicFile.WriteAllBytes(dllPath, dll);
        IR.AtomicFile.WriteAllBytes(Path.ChangeExtension(dllPath, ".pdb"), pdb);
    }

    private static IGraphProgram Instantiate(Assembly asm, GeneratedSource source)
    {
        var type = asm.GetType(source.FullClassName) ?? throw new CodeGenException($"generated assembly lacks {source.FullClassName}");
        return (IGraphProgram)Activator.CreateInstance(type)!;
    }

    /// <summary>The lowest scheduling priority for the calling thread: nice 19 on Linux (lowering it needs no privilege).
    /// .NET's thread priorities do not reach the Linux scheduler.</summary>
    private static class LowestPriority
    {
        [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
        private static extern int gettid();

        [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
        private static extern int setpriority(int which, int who, int prio);

        public static void ForThisThread()
        {
            if (!OperatingSystem.IsLinux()) return;
            try { _ = setpriority(0 /* PRIO_PROCESS: one thread, by its id */, gettid(), 19); }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        }
    }
}
