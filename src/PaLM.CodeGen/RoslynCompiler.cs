using System.Reflection;
using System.Runtime.Loader;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
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

    private static CSharpCompilation Compilation(GeneratedSource source, string assemblyName, OutputKind kind)
    {
        var tree = CSharpSyntaxTree.Create(source.Syntax, new CSharpParseOptions(LanguageVersion.Latest), source.FileName, System.Text.Encoding.UTF8);
        return CSharpCompilation.Create(assemblyName, new[] { tree }, s_references.Value,
            new CSharpCompilationOptions(kind, optimizationLevel: OptimizationLevel.Release, nullableContextOptions: NullableContextOptions.Enable,
                mainTypeName: kind == OutputKind.ConsoleApplication ? source.FullClassName : null));
    }

    private static (byte[] Dll, byte[] Pdb) EmitBytes(GeneratedSource source, string assemblyName, OutputKind kind)
    {
        var compilation = Compilation(source, assemblyName, kind);
        using var dll = new MemoryStream();
        using var pdb = new MemoryStream();
        // Embedded source + portable PDB: stack traces and debuggers show the generated file and line.
        var text = Microsoft.CodeAnalysis.Text.SourceText.From(source.Text, System.Text.Encoding.UTF8);
        var result = compilation.Emit(dll, pdb,
            embeddedTexts: new[] { EmbeddedText.FromSource(source.FileName, text) },
            options: new EmitOptions(debugInformationFormat: DebugInformationFormat.PortablePdb));
        if (!result.Success)
        {
            var errors = result.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error).Take(10).Select(d => d.ToString());
            throw new CodeGenException("generated C# did not compile (a palmc bug):\n" + string.Join("\n", errors));
        }
        return (dll.ToArray(), pdb.ToArray());
    }

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
        IR.AtomicFile.WriteAllBytes(dllPath, dll);
        IR.AtomicFile.WriteAllBytes(Path.ChangeExtension(dllPath, ".pdb"), pdb);
    }

    private static IGraphProgram Instantiate(Assembly asm, GeneratedSource source)
    {
        var type = asm.GetType(source.FullClassName) ?? throw new CodeGenException($"generated assembly lacks {source.FullClassName}");
        return (IGraphProgram)Activator.CreateInstance(type)!;
    }
}
