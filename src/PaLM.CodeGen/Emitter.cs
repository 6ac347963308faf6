using System.Collections.Immutable;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using PaLM.IR;
using static Microsoft.CodeAnalysis.CSharp.SyntaxFactory;

namespace PaLM.CodeGen;

/// <summary>What to emit besides the computation.</summary>
public sealed record CodeGenOptions
{
    public static CodeGenOptions Default { get; } = new();

    /// <summary>
    /// Time every op statement into <c>device.Profile</c> (when a host sets one) and list the sites in
    /// <c>ProfileSites</c>: what <c>palmc bench --profile</c> reads. Off by default: the timers cost about 50 ns an op.
    /// </summary>
    public bool Profile { get; init; }

    /// <summary>Compute elementwise ops into their operands' dead buffers (see <see cref="BufferReuse"/>). On by default.</summary>
    public bool ReuseBuffers { get; init; } = true;

    /// <summary>Run chains of elementwise ops as one generated loop each (see <see cref="LoopFusion"/>). On by default.</summary>
    public bool FuseLoops { get; init; } = true;

    /// <summary>
    /// Give a fused loop whose ops all have a vector form (<c>PaLM.Runtime.Ev</c>) a single-pass vector loop over each
    /// chunk, the span primitives finishing the ragged end. On by default; the results are the same bits either way.
    /// </summary>
    public bool VectorizeLoops { get; init; } = true;

    /// <summary>
    /// Let a training step update its parameters and optimizer state in place (JAX's <c>donate_argnums</c>): the
    /// caller hands the old tensors over and must treat them as consumed (the trainer does). Off by default, since a
    /// caller that runs the step twice on the same parameters would see them change.
    /// </summary>
    public bool DonateUpdatedArguments { get; init; }

    /// <summary>
    /// Keep a layer loop's per-layer results that only later loops read as one tensor per layer instead of copying them
    /// into a stacked buffer (see <see cref="LayerStacks"/>). On by default; off reproduces the copies (to compare).
    /// </summary>
    public bool KeepLayerResults { get; init; } = true;

    /// <summary>
    /// Let fused loops write results into their slices of the concatenation that reads them (see
    /// <see cref="ConcatDestinations"/>). On by default; off makes every concatenation copy all its pieces (to compare).
    /// </summary>
    public bool ConcatInPlace { get; init; } = true;

    /// <summary>
    /// Keep the weights a fused projection joins side by side in one buffer (see <see cref="ParameterGroups"/>), so
    /// the join is a view. On by default; off makes each weight a tensor of its own (to compare).
    /// </summary>
    public bool GroupParameters { get; init; } = true;

    /// <summary>
    /// Let a product over a concatenation along a dim its output keeps read the pieces where they lie, one product per
    /// piece into its slice of the result (see <see cref="ProductsOverPieces"/>). On by default; off makes the join.
    /// </summary>
    public bool ProductsOverPieces { get; init; } = true;

    /// <summary>
    /// Run a layer norm's two cotangents of the same dy and x as one call (see <see cref="LayerNormSiblings"/>). On by
    /// default; the results are the same bits either way.
    /// </summary>
    public bool LayerNormSiblings { get; init; } = true;
}

/// <summary>
/// The generated C# of one graph: its syntax tree and the name of the class implementing IGraphProgram. The tree is
/// laid out (<c>NormalizeWhitespace</c>) only when its text or tree is asked for: that layout was half of emitting
/// palm-cpu's step (about 120 of 250 ms), and a program loaded from the compilation cache needs neither, only its
/// <see cref="Fingerprint"/>.
/// </summary>
public sealed class GeneratedSource(CompilationUnitSyntax unformatted, string @namespace, string className, string fileName)
{
    private readonly Lazy<CompilationUnitSyntax> _syntax = new(() => unformatted.NormalizeWhitespace(eol: "\n"));
    private readonly Lazy<string> _fingerprint = new(() => FingerprintOf(unformatted));

    public string Namespace { get; } = @namespace;
    public string ClassName { get; } = className;
    public string FileName { get; } = fileName;
    public string FullClassName => $"{Namespace}.{ClassName}";

    /// <summary>The laid-out tree, as Roslyn compiles it and <see cref="Text"/> prints it.</summary>
    public CompilationUnitSyntax Syntax => _syntax.Value;

    public string Text => Syntax.ToFullString();

    /// <summary>
    /// The program's tokens, each with its comments and directives, one separator between tokens: what the laid-out text
    /// is a function of (the layout only adds whitespace between tokens), so equal fingerprints mean equal programs. The
    /// compilation cache keys on it.
    /// </summary>
    public string Fingerprint => _fingerprint.Value;

    private static string FingerprintOf(CompilationUnitSyntax unit)
    {
        var text = new System.Text.StringBuilder();
        foreach (var token in unit.DescendantTokens(descendIntoTrivia: false))
            text.Append(token.ToFullString()).Append('\u0001');
        return text.ToString();
    }
}

/// <summary>
/// IR → C# through SyntaxFactory: one class implementing <c>PaLM.Runtime.IGraphProgram</c>, one statement per IR op
/// (a call into the runtime facade <c>Rt</c>, read from the op's lowering rule), locals named after DSL names, and a
/// comment tying each statement to its DSL line. <c>repeat</c> becomes a <c>for</c> loop over the layer slices.
/// </summary>
public sealed class Emitter
{
    public const string GeneratedNamespace = "PaLM.Generated";

    private readonly Graph _graph;
    private readonly CodeGenOptions _options;
    private readonly CSharpNames _names = new();
    private readonly Dictionary<Value, string> _locals = new(ReferenceEqualityComparer.Instance);
    private readonly List<ExpressionSyntax> _sites = [];
    private readonly IReadOnlyDictionary<Node, int> _inPlace;
    private readonly FusionPlan _fusion;
    private readonly IReadOnlyDictionary<FusionGroup, int[]> _loopDonors;
    private readonly List<MethodDeclarationSyntax> _kernels = [];
    /// <summary>The runtime calls' integer-array literals (shapes, axes, permutations, split sizes, loop donors), one
    /// static field each: written inline, each call would allocate its array on every step.</summary>
    private readonly Dictionary<string, string> _arrayFields = new(StringComparer.Ordinal);
    private readonly List<MemberDeclarationSyntax> _constants = [];
    private readonly LayerStacks _stacks;
    private readonly ConcatDestinations _concatInto;
    private readonly Dictionary<Node, string> _joins = new(ReferenceEqualityComparer.Instance);
    private readonly ProductsOverPieces _overPieces;
    private readonly LayerNormSiblings _lnSiblings;
    private int _loopDepth;
    private readonly HashSet<Value> _persistentArgs;
    private readonly IReadOnlyList<ParameterGroups.Group> _parameterGroups;

    private Emitter(Graph graph, CodeGenOptions options)
    {
        (_graph, _options) = (graph, options);
        _persistentArgs = new HashSet<Value>(graph.Persistent.Select(a => a.Value), ReferenceEqualityComparer.Instance);
        _parameterGroups = options.GroupParameters ? ParameterGroups.Of(graph).Groups : [];
        _fusion = options.FuseLoops ? LoopFusion.Plan(graph) : FusionPlan.None;
        (_inPlace, _loopDonors) = options.ReuseBuffers
            ? BufferReuse.PlanAll(graph, _fusion, options.DonateUpdatedArguments)
            : (new Dictionary<Node, int>(), new Dictionary<FusionGroup, int[]>());
        _stacks = options.KeepLayerResults ? new LayerStacks(graph, _fusion, _inPlace, _loopDonors) : LayerStacks.None;
        _concatInto = options.ConcatInPlace ? new ConcatDestinations(graph, _fusion) : ConcatDestinations.None;
        _overPieces = options.ProductsOverPieces ? new ProductsOverPieces(graph, _concatInto) : PaLM.CodeGen.ProductsOverPieces.None;
        _lnSiblings = options.LayerNormSiblings ? new LayerNormSiblings(graph) : PaLM.CodeGen.LayerNormSiblings.None;
    }

    public static GeneratedSource Emit(Graph graph, string? sourceFileName = null, CodeGenOptions? options = null)
    {
        Verifier.Verify(graph);
        return new Emitter(graph, options ?? CodeGenOptions.Default).EmitUnit(sourceFileName ?? graph.Name + ".cs");
    }

    private GeneratedSource EmitUnit(string fileName)
    {
        var className = CSharpNames.TypeName(_graph.Name);
        var cls = ClassDeclaration(CSharpNames.Token(className))
            .AddModifiers(Token(SyntaxKind.PublicKeyword), Token(SyntaxKind.SealedKeyword))
            .AddBaseListTypes(SimpleBaseType(ParseTypeName("IGraphProgram")))
            .AddMembers(
                Property("string", "Name", Lit(_graph.Name)),
                Property("MeshShape", "Mesh", MeshShape()),
                Property("IReadOnlyList<TensorSpec>", "Parameters", Specs(_graph.Persistent.Select(a =>
                    (a.Value, a.Value.Name, a.Spmd, a.Kind == ArgKind.State ? "State" : "Parameter", -1)))),
                Property("IReadOnlyList<TensorSpec>", "Inputs", Specs(_graph.Inputs.Select(a => (a.Value, a.Value.Name, a.Spmd, "Input", -1)))),
                Property("IReadOnlyList<TensorSpec>", "Outputs", Specs(_graph.Body.Results.Select((v, i) =>
                    (v, _graph.OutputNames[i], _graph.OutputSpmd.IsDefaultOrEmpty ? null : (SpmdArg?)_graph.OutputSpmd[i], "Output", PersistentIndex(i))))),
                InitMethod(),
                ForwardMethod(),
                MainMethod(className));
        if (ArrangeMethod() is { } arrange) cls = cls.AddMembers(arrange);
        // After ForwardMethod, which numbered the sites and built the fused loops' kernels.
        cls = cls.AddMembers([.. _constants, .. _kernels]);
        if (_options.Profile)
            cls = cls.AddMembers(Property("IReadOnlyList<OpSite>", "ProfileSites", Array("OpSite", _sites)));
        var ns = FileScopedNamespaceDeclaration(ParseName(GeneratedNamespace)).AddMembers(cls);
        var header = TriviaList(
            Comment($"// <auto-generated/> by palmc from graph '{CSharpNames.CommentText(_graph.Name)}'. Do not edit: regenerate."),
            CarriageReturnLineFeed,
            Trivia(NullableDirectiveTrivia(Token(SyntaxKind.EnableKeyword), true)));
        var unit = CompilationUnit()
            .AddUsings(
                UsingDirective(ParseName("System")),
                UsingDirective(ParseName("System.Collections.Generic")),
                UsingDirective(ParseName("TorchSharp")),
                UsingDirective(ParseName("PaLM.Runtime")),
                UsingDirective(ParseName("TorchSharp.torch")).WithStaticKeyword(Token(SyntaxKind.StaticKeyword)))
            .AddMembers(ns)
            .WithLeadingTrivia(header);
        return new GeneratedSource(unit, GeneratedNamespace, className, fileName);
    }

    // ---- members ------------------------------------------------------------------------------------------------

    private static PropertyDeclarationSyntax Property(string type, string name, ExpressionSyntax value) =>
        PropertyDeclaration(ParseTypeName(type), Identifier(name))
            .AddModifiers(Token(SyntaxKind.PublicKeyword))
            .AddAccessorListAccessors(AccessorDeclaration(SyntaxKind.GetAccessorDeclaration).WithSemicolonToken(Token(SyntaxKind.SemicolonToken)))
            .WithInitializer(EqualsValueClause(value))
            .WithSemicolonToken(Token(SyntaxKind.SemicolonToken));

    /// <summary>
    /// Specs of arguments (or results) with their global shapes and, for a per-device program, how each is split over
    /// the mesh, so hosts can make global tensors and hand each device its piece.
    /// </summary>
    /// <summary>The index among the persistent arguments of the one output <paramref name="i"/> replaces, or -1.</summary>
    private int PersistentIndex(int i)
    {
        if (_graph.OutputUpdates.IsDefaultOrEmpty || _graph.OutputUpdates[i] < 0) return -1;
        var arg = _graph.Args[_graph.OutputUpdates[i]];
        return _graph.Persistent.ToList().IndexOf(arg);
    }

    private static ExpressionSyntax Specs(IEnumerable<(Value Value, string Name, SpmdArg? Spmd, string Role, int Updates)> values) =>
        Array("TensorSpec", values.Select(a =>
        {
            var global = a.Spmd?.GlobalType ?? a.Value.Type;
            var sharding = a.Spmd?.Sharding ?? IR.Sharding.Replicated(global.Rank);
            return (ExpressionSyntax)ObjectCreationExpression(IdentifierName("TensorSpec"))
                .AddArgumentListArguments(
                    Argument(Lit(a.Name)),
                    Argument(DType(global.DType)),
                    Argument(Longs(global.Shape)),
                    Argument(Array("string", global.Dims.Select(d => Lit(d.Name)))),
                    Argument(AxesArray(sharding)))
                .WithInitializer(InitializerExpression(SyntaxKind.ObjectInitializerExpression, SeparatedList<ExpressionSyntax>(
                    new[] { Assign("Role", ParseExpression("TensorRole." + a.Role)) }
                        .Concat(a.Updates >= 0 ? [Assign("Updates", LiteralExpression(SyntaxKind.NumericLiteralExpression, Literal(a.Updates)))] : []))));
        }));

    private static ExpressionSyntax Assign(string property, ExpressionSyntax value) =>
        AssignmentExpression(SyntaxKind.SimpleAssignmentExpression, IdentifierName(property), value);

    private static ExpressionSyntax AxesArray(IR.Sharding s) =>
        Array("string[]", s.DimAxes.Select(axes => Array("string", axes.Select(Lit))));

    private ExpressionSyntax MeshShape()
    {
        var axes = _graph.Mesh?.Axes ?? [];
        return ObjectCreationExpression(IdentifierName("MeshShape")).AddArgumentListArguments(
            Argument(Array("string", axes.Select(a => Lit(a.Name)))), Argument(Longs(axes.Select(a => a.Size))));
    }

    private MethodDeclarationSyntax InitMethod()
    {
        var body = new List<StatementSyntax> { Local("gen", Rt("NewGenerator", IdentifierName("seed"))) };
        var items = new List<ExpressionSyntax>();
        foreach (var p in _graph.Persistent)
        {
            // Every device draws the global tensor from the same seeded stream and keeps its piece, so a partitioned
            // program starts from exactly the weights of the single-device one.
            var t = p.Spmd?.GlobalType ?? p.Value.Type;
            ExpressionSyntax init = p.Init!.Kind == InitKind.Normal
                ? Rt("InitNormal", IdentifierName("gen"), Longs(t.Shape), Lit(p.Init.Value), DType(t.DType))
                : Rt("InitConstant", Longs(t.Shape), Lit(p.Init.Value), DType(t.DType));
            if (p.Spmd is { } spmd && !spmd.Sharding.IsReplicated) init = Rt("ShardOf", IdentifierName("device"), init, AxesArray(spmd.Sharding));
            items.Add(init);
        }
        if (_parameterGroups.Count == 0) body.Add(ReturnStatement(Array("Tensor", items)));
        else
        {
            // Drawn one by one as before (the same values), then laid side by side.
            body.Add(Local("parameters", Array("Tensor", items)));
            body.Add(ExpressionStatement(InvocationExpression(IdentifierName("ArrangeParameters")).AddArgumentListArguments(Argument(IdentifierName("parameters")))));
            body.Add(ReturnStatement(IdentifierName("parameters")));
        }
        return MethodDeclaration(ParseTypeName("Tensor[]"), "InitParameters")
            .AddModifiers(Token(SyntaxKind.PublicKeyword))
            .AddParameterListParameters(
                Parameter(Identifier("device")).WithType(ParseTypeName("DeviceContext")),
                Parameter(Identifier("seed")).WithType(ParseTypeName("long")))
            .WithBody(Block(body));
    }

    /// <summary><c>ArrangeParameters</c>: the parameter groups (<see cref="ParameterGroups"/>), laid side by side.</summary>
    private MethodDeclarationSyntax? ArrangeMethod()
    {
        if (_parameterGroups.Count == 0) return null;
        var body = _parameterGroups.Select(gr => (StatementSyntax)ExpressionStatement(Rt("GroupSideBySide", IdentifierName("persistent"),
            ArrayField("int", "I", [.. gr.Members.Select(m => (long)m)]), Int(gr.Lead), Int(gr.Trail))));
        return MethodDeclaration(PredefinedType(Token(SyntaxKind.VoidKeyword)), "ArrangeParameters")
            .AddModifiers(Token(SyntaxKind.PublicKeyword))
            .AddParameterListParameters(Parameter(Identifier("persistent")).WithType(ParseTypeName("Tensor[]")))
            .WithBody(Block(body));
    }

    private MethodDeclarationSyntax ForwardMethod()
    {
        var body = new List<StatementSyntax>
        {
            LocalDeclarationStatement(VariableDeclaration(IdentifierName("var"))
                .AddVariables(VariableDeclarator("scope").WithInitializer(EqualsValueClause(Rt("Scope")))))
                .WithUsingKeyword(Token(SyntaxKind.UsingKeyword)),
        };
        int pi = 0, ii = 0;
        foreach (var a in _graph.Args)
        {
            var (array, index) = a.Kind != ArgKind.Input ? ("parameters", pi++) : ("inputs", ii++);
            body.Add(Local(Bind(a.Value), ElementAccessExpression(IdentifierName(array))
                .AddArgumentListArguments(Argument(LiteralExpression(SyntaxKind.NumericLiteralExpression, Literal(index))))));
        }
        EmitBlock(_graph.Body, body);
        body.Add(ReturnStatement(Array("Tensor", _graph.Body.Results.Select(v => Rt("Keep", Ref(v))))));
        return MethodDeclaration(ParseTypeName("Tensor[]"), "Forward")
            .AddModifiers(Token(SyntaxKind.PublicKeyword))
            .AddParameterListParameters(
                Parameter(Identifier("device")).WithType(ParseTypeName("DeviceContext")),
                Parameter(Identifier("parameters")).WithType(ParseTypeName("Tensor[]")),
                Parameter(Identifier("inputs")).WithType(ParseTypeName("Tensor[]")))
            .WithBody(Block(body));
    }

    /// <summary><c>dotnet graph.dll [seed]</c> prints the loss on a seeded batch (the compiled program's entry point).</summary>
    private static MethodDeclarationSyntax MainMethod(string className) =>
        MethodDeclaration(ParseTypeName("int"), "Main")
            .AddModifiers(Token(SyntaxKind.PublicKeyword), Token(SyntaxKind.StaticKeyword))
            .AddParameterListParameters(Parameter(Identifier("args")).WithType(ParseTypeName("string[]")))
            .WithExpressionBody(ArrowExpressionClause(
                InvocationExpression(ParseExpression("ProgramHost.Main"))
                    .AddArgumentListArguments(
                        Argument(ObjectCreationExpression(IdentifierName(CSharpNames.Token(className))).WithArgumentList(ArgumentList())),
                        Argument(IdentifierName("args")))))
            .WithSemicolonToken(Token(SyntaxKind.SemicolonToken));

    // ---- statements ---------------------------------------------------------------------------------------------

    private void EmitBlock(Block block, List<StatementSyntax> body)
    {
        foreach (var n in block.Nodes)
        {
            if (_fusion.GroupOf(n) is { } group)
            {
                // A fused loop runs where its last member stood; the other members emit nothing of their own.
                if (ReferenceEquals(n, group.Last)) EmitFusedLoop(group, body);
                continue;
            }
            // A join the product after it reads piece by piece is never made.
            if (_overPieces.Absorbed(n)) continue;
            // A layer norm's scale cotangent computed by its input cotangent's call.
            if (_lnSiblings.Absorbed(n)) continue;
            // A layer norm's input cotangent whose call computes its scale cotangent too.
            var dscale = _lnSiblings.ScaleOf(n);
            var comment = Comment("// " + CSharpNames.CommentText(
                (n.Loc is { } l ? $"{Path.GetFileName(l.File)}:{l.Line}: " : "") + Printer.FormatNodeHead(n)
                + (dscale is null ? "" : "; " + Printer.FormatNodeHead(dscale))));
            var start = body.Count;
            var lowering = n.Op.Lower(new LowerContext(n));
            if (lowering is RtCall plain && _inPlace.TryGetValue(n, out var donor)) lowering = BufferReuse.InPlaceCall(n, plain, donor);
            // A join some of whose pieces their loops wrote in place: copy in only the others.
            ExpressionSyntax? intoJoin = lowering is RtCall { Method: "Concat" } concat && _joins.TryGetValue(n, out var join)
                ? Rt("ConcatInto", [IdentifierName(CSharpNames.Token(join)), .. concat.Args.Select(a => Arg(a, n))])
                : null;
            (int Site, string Local)? timer = lowering is not RtCall || !_options.Profile ? null
                : dscale is null ? StartTimer(n, body)
                : StartTimer(n, body, op: "layernorm_grads", flops: n.Op.Flops(n) + dscale.Op.Flops(dscale));
            switch (lowering)
            {
                case RtCall { Method: "LayerNormDx" } call when dscale is not null:
                    BindParts(Rt("LayerNormGrads", call.Args.Select(a => Arg(a, n)).ToArray()), [n.Outputs[0], dscale.Outputs[0]],
                        n.Outputs[0].Name + "_grads", body);
                    break;
                case RtCall { Method: "Einsum" } call when _overPieces.Of(n) is { } pieces:
                    body.Add(Local(Bind(n.Outputs[0]), Rt("EinsumOverPieces", Arg(call.Args[0], n), Lit((long)pieces.Operand), Lit(pieces.Axis),
                        Ref(n.Inputs[1 - pieces.Operand]), Array("Tensor", pieces.Concat.Inputs.Select(Ref)))));
                    break;
                case RtCall call when n.Outputs.Length == 1:
                    body.Add(Local(Bind(n.Outputs[0]), intoJoin ?? Call(call, n)));
                    break;
                case RtCall call:
                    BindParts(Call(call, n), n.Outputs, n.Outputs[0].Name + "_parts", body);
                    break;
                case LoopLowering:
                    EmitRepeat(n, body);
                    break;
                default:
                    throw new InvalidOperationException($"{n.Op.Name}: unknown lowering {lowering.GetType().Name}");
            }
            if (timer is var (site, local)) body.Add(StopTimer(site, local));
            body[start] = body[start].WithLeadingTrivia(comment);
        }
    }

    /// <summary>
    /// A fused loop: <c>var parts = Rt.Fused(LoopK, temps, inputs, scalars, donors)</c> (a result per donor entry: the
    /// operand whose buffer it takes, or -1), its results bound to the
    /// members' names, and the kernel <c>LoopK</c> (one <c>Ew</c> span primitive per member, in block order) added to
    /// the class. Intermediates nothing outside reads go to scratch slots, reused once their last reader has run; a
    /// slot is never its own op's source, which the composite primitives need.
    /// </summary>
    private void EmitFusedLoop(FusionGroup group, List<StatementSyntax> body)
    {
        var kernelName = $"Loop{group.Id}";
        var chunk = IdentifierName("c");
        ExpressionSyntax ChunkCall(string method, int i) =>
            InvocationExpression(MemberAccessExpression(SyntaxKind.SimpleMemberAccessExpression, chunk, IdentifierName(method))).AddArgumentListArguments(Argument(Int(i)));
        var lastUse = new Dictionary<Value, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < group.Members.Count; i++) foreach (var v in group.Members[i].Inputs) lastUse[v] = i;
        var slot = new Dictionary<Value, ExpressionSyntax>(ReferenceEqualityComparer.Instance);
        var tempOf = new Dictionary<Value, int>(ReferenceEqualityComparer.Instance);
        var free = new SortedSet<int>();
        int temps = 0;
        var statements = new List<StatementSyntax>();
        for (int i = 0; i < group.Members.Count; i++)
        {
            var m = group.Members[i];
            var args = m.Inputs.Select(v =>
                slot.TryGetValue(v, out var s) ? s
                : group.Constants.TryGetValue(v, out var k) ? Lit((float)k)
                : v.Type.Rank == 0 ? ChunkCall("Scalar", group.Scalars.IndexOf(v))
                : group.Leads.Contains(v) ? ChunkCall("Lead", group.Leads.IndexOf(v))
                : ChunkCall("In", group.Inputs.IndexOf(v))).ToList();
            var result = m.Outputs[0];
            int output = group.Outputs.IndexOf(result);
            ExpressionSyntax dest;
            if (output >= 0) dest = ChunkCall("Out", output);
            else
            {
                int t = free.Count > 0 ? free.Min : temps++;
                free.Remove(t);
                tempOf[result] = t;
                dest = ChunkCall("Temp", t);
            }
            slot[result] = dest;
            statements.Add(ExpressionStatement(InvocationExpression(
                    MemberAccessExpression(SyntaxKind.SimpleMemberAccessExpression, IdentifierName("Ew"), IdentifierName(m.Op.LoopPrimitive!)))
                .AddArgumentListArguments([.. args.Append(dest).Select(Argument)]))
                .WithLeadingTrivia(Comment("// " + CSharpNames.CommentText(Printer.FormatNodeHead(m)))));
            foreach (var v in m.Inputs.Distinct())
                if (lastUse[v] == i && tempOf.TryGetValue(v, out var t)) free.Add(t);
        }
        if (_options.VectorizeLoops && VectorLoop(group) is { } vector) statements.InsertRange(0, vector);
        _kernels.Add(MethodDeclaration(PredefinedType(Token(SyntaxKind.VoidKeyword)), kernelName)
            .AddModifiers(Token(SyntaxKind.PrivateKeyword), Token(SyntaxKind.StaticKeyword))
            .AddParameterListParameters(Parameter(Identifier("c")).WithType(ParseTypeName("LoopChunk")))
            .WithBody(Block(statements)));

        var where = group.Last.Loc is { } l ? $"{Path.GetFileName(l.File)}:{l.Line}: " : "";
        var comment = Comment("// " + CSharpNames.CommentText(
            $"{where}fused loop {kernelName} over {group.Type}: {string.Join(", ", group.Members.Select(m => m.Outputs[0].Name))}"));
        var start = body.Count;
        (int Site, string Local)? timer = _options.Profile ? StartTimer(group.Last, body, "fused_loop", group.Members.Sum(m => m.Op.Flops(m))) : null;
        // Results a concatenation reads are written into their slices of its buffer, allocated by the first such loop.
        var donors = (_loopDonors.GetValueOrDefault(group) ?? [.. group.Outputs.Select(_ => -1)]).ToArray();
        var destinations = group.Outputs.Select(o => _concatInto.Of(o)).ToArray();
        foreach (var piece in destinations.OfType<ConcatDestinations.Piece>().Select(p => p.Concat).Distinct())
        {
            if (_joins.ContainsKey(piece)) continue;
            var t = piece.Outputs[0].Type;
            _joins[piece] = _names.Fresh(piece.Outputs[0].Name + "_join");
            body.Add(Local(_joins[piece], Rt("Empty", LongsField([.. t.Shape]), DType(t.DType))));
        }
        for (int j = 0; j < donors.Length; j++) if (destinations[j] is not null) donors[j] = -1;
        // A donated argument (a parameter or optimizer state updated in place) is written as a destination: the loop
        // writes a donor only when it is dense, and a grouped parameter is a strided view of its group's buffer.
        var intoArgument = new ExpressionSyntax?[donors.Length];
        for (int j = 0; j < donors.Length; j++)
            if (donors[j] >= 0 && _persistentArgs.Contains(group.Inputs[donors[j]]))
                (intoArgument[j], donors[j]) = (Ref(group.Inputs[donors[j]]), -1);
        var loopArgs = new List<ExpressionSyntax> { IdentifierName(kernelName), Int(temps), Array("Tensor", group.Inputs.Select(Ref)), Array("Tensor", group.Scalars.Select(Ref)) };
        if (group.Leads.Count > 0) loopArgs.Add(Array("Tensor", group.Leads.Select(Ref)));
        loopArgs.Add(ArrayField("int", "I", [.. donors.Select(d => (long)d)]));
        if (destinations.Any(d => d is not null) || intoArgument.Any(d => d is not null))
            loopArgs.Add(Array("Tensor?", destinations.Select((d, j) => intoArgument[j] ?? (d is null
                ? (ExpressionSyntax)LiteralExpression(SyntaxKind.NullLiteralExpression)
                : Rt("Narrow", IdentifierName(CSharpNames.Token(_joins[d.Concat])), Lit(d.Axis), Lit(d.Offset), Lit(d.Length))))));
        var call = Rt("Fused", [.. loopArgs]);
        BindParts(call, group.Outputs, group.Last.Outputs[0].Name + "_loop", body);
        if (timer is var (site, local)) body.Add(StopTimer(site, local));
        body[start] = body[start].WithLeadingTrivia(comment);
    }

    /// <summary>
    /// The vector loop a fused kernel starts with, when every member's primitive has a vector form in
    /// <see cref="PaLM.Runtime.Ev"/> (else null): under <c>Ev.Accelerated</c>, whole vectors of the chunk, each input
    /// loaded once (its line <see cref="PaLM.Runtime.PrefetchStream.Distance"/> elements ahead prefetched where it is
    /// walked as rows with gaps), each member's result a local, results stored as they are made; then <c>c.Skip(i)</c> hands the
    /// rest (fewer than a vector's elements) to the span statements that follow. Every name in it is made here.
    /// </summary>
    private static List<StatementSyntax>? VectorLoop(FusionGroup group)
    {
        var local = new Dictionary<Value, string>(ReferenceEqualityComparer.Instance);
        for (int k = 0; k < group.Inputs.Count; k++) local[group.Inputs[k]] = $"x{k}";
        for (int k = 0; k < group.Scalars.Count; k++) local[group.Scalars[k]] = $"s{k}";
        for (int k = 0; k < group.Leads.Count; k++) local[group.Leads[k]] = $"l{k}";
        var loop = new System.Text.StringBuilder();
        for (int k = 0; k < group.Inputs.Count; k++) loop.Append($"Ev.Prefetch(a{k}, i);\n");
        for (int k = 0; k < group.Inputs.Count; k++) loop.Append($"var x{k} = Ev.Load(in{k}, i);\n");
        for (int i = 0; i < group.Members.Count; i++)
        {
            var m = group.Members[i];
            // A rank-0 operand (scalar, lead or constant) is a float; anything else a vector.
            bool IsFloat(Value v) => !local.ContainsKey(v) || group.Scalars.Contains(v) || group.Leads.Contains(v);
            var kinds = m.Inputs.Select(v => IsFloat(v) ? typeof(float) : typeof(System.Runtime.Intrinsics.Vector512<float>)).ToArray();
            if (m.Op.LoopPrimitive is not { } name || typeof(PaLM.Runtime.Ev).GetMethod(name, kinds) is null) return null;
            var args = m.Inputs.Select(v => local.TryGetValue(v, out var n) ? n
                : group.Constants.TryGetValue(v, out var c) ? Lit((float)c).ToFullString()
                : throw new InvalidOperationException($"fused loop {group.Id}: {v.Name} has no place in the kernel"));
            var result = local[m.Outputs[0]] = $"v{i}";
            loop.Append($"var {result} = Ev.{name}({string.Join(", ", args)});\n");
            if (group.Outputs.IndexOf(m.Outputs[0]) is var o and >= 0) loop.Append($"Ev.Store({result}, out{o}, i);\n");
        }
        var text = new System.Text.StringBuilder("if (Ev.Accelerated)\n{\n");
        for (int k = 0; k < group.Inputs.Count; k++) text.Append($"var in{k} = c.In({k});\n");
        for (int k = 0; k < group.Inputs.Count; k++) text.Append($"var a{k} = c.Ahead({k});\n");
        for (int k = 0; k < group.Outputs.Count; k++) text.Append($"var out{k} = c.Out({k});\n");
        for (int k = 0; k < group.Scalars.Count; k++) text.Append($"var s{k} = c.Scalar({k});\n");
        for (int k = 0; k < group.Leads.Count; k++) text.Append($"var l{k} = c.Lead({k});\n");
        text.Append($"for (; i <= c.Length - Ev.Width; i += Ev.Width)\n{{\n{loop}}}\nif (i == c.Length) return;\nc.Skip(i);\n}}\n");
        return [ParseStatement("int i = 0;\n"), ParseStatement(text.ToString())];
    }

    /// <summary><c>var tuple = call;</c> then <c>var v_i = tuple[i];</c> for each of <paramref name="values"/>: a call that
    /// returns a tensor per result (several outputs, a fused loop's results).</summary>
    private void BindParts(ExpressionSyntax call, IReadOnlyList<Value> values, string tupleName, List<StatementSyntax> body)
    {
        var tuple = _names.Fresh(tupleName);
        body.Add(Local(tuple, call));
        for (int i = 0; i < values.Count; i++)
            body.Add(Local(Bind(values[i]), ElementAccessExpression(IdentifierName(CSharpNames.Token(tuple))).AddArgumentListArguments(Argument(Int(i)))));
    }

    /// <summary>
    /// Profiling: registers <paramref name="n"/> as a site (op, name, DSL line, FLOPs per execution from the op table)
    /// and emits <c>var t = device.Profile?.Start() ?? 0;</c> before its call; the caller emits <c>device.Profile?.Stop(site, t)</c> after it.
    /// A fused loop's site is its last member's, under <paramref name="op"/> with its members' <paramref name="flops"/>.
    /// </summary>
    private (int Site, string Local) StartTimer(Node n, List<StatementSyntax> body, string? op = null, long? flops = null, string? name = null)
    {
        int site = _sites.Count;
        var location = n.Loc is { } l ? $"{Path.GetFileName(l.File)}:{l.Line}" : "";
        _sites.Add(ObjectCreationExpression(IdentifierName("OpSite")).AddArgumentListArguments(
            Argument(LiteralExpression(SyntaxKind.NumericLiteralExpression, Literal(site))), Argument(Lit(op ?? n.Op.Name)), Argument(Lit(name ?? (n.Outputs.Length > 0 ? n.Outputs[0].Name : n.Op.Name))),
            Argument(Lit(location)), Argument(Lit(flops ?? n.Op.Flops(n))),
            Argument(LiteralExpression(n.Op.IsMatmul ? SyntaxKind.TrueLiteralExpression : SyntaxKind.FalseLiteralExpression)),
            Argument(LiteralExpression(_loopDepth > 0 ? SyntaxKind.TrueLiteralExpression : SyntaxKind.FalseLiteralExpression))));
        var local = _names.Fresh("t_op");
        body.Add(Local(local, ParseExpression("device.Profile?.Start() ?? 0L")));
        return (site, local);
    }

    private static StatementSyntax StopTimer(int site, string local) =>
        ExpressionStatement(ConditionalAccessExpression(ParseExpression("device.Profile"),
            InvocationExpression(MemberBindingExpression(IdentifierName("Stop"))).AddArgumentListArguments(Argument(Int(site)), Argument(IdentifierName(CSharpNames.Token(local))))));

    /// <summary>
    /// <c>repeat</c> becomes: carried values in mutable locals, stacked results in buffers allocated before the loop
    /// (or, for results only later loops slice, a <c>LayerStack</c> keeping each layer's tensor: <see cref="LayerStacks"/>),
    /// and a counted loop (downwards for <c>reverse</c>) whose body runs in its own dispose scope: it slices each stacked
    /// operand (<c>Rt.Select(w, 0, layer)</c>, or <c>Rt.TakeLayer</c> from a stack only it reads), runs the region's
    /// statements, stores per-iteration results, and moves the next carried values out of the scope (freeing the
    /// previous ones), so one layer's temporaries are gone before the next layer runs.
    /// </summary>
    private void EmitRepeat(Node n, List<StatementSyntax> body)
    {
        var region = n.Regions[0];
        var carried = (int)n.Attr<IntAttr>("carried").Value;
        var stacked = (int)n.Attr<IntAttr>("stacked").Value;
        var count = ControlOps.Count(n, _graph.DimsByName);
        var reverse = ControlOps.IsReverse(n);
        var loopVar = IdentifierName(CSharpNames.Token(_names.Fresh(n.Attr<DimsAttr>("count").Names[0] + "_i")));
        for (int i = 0; i < carried; i++) body.Add(Local(Bind(region.Args[i]), Ref(n.Inputs[i])));
        for (int k = carried; k < n.Outputs.Length; k++)
        {
            var t = n.Outputs[k].Type;
            body.Add(Local(Bind(n.Outputs[k]), _stacks.IsStack(n.Outputs[k]) ? Rt("Layers", Lit(count)) : Rt("Empty", LongsField([.. t.Shape]), DType(t.DType))));
        }
        var loop = new List<StatementSyntax>();
        for (int i = carried; i < carried + stacked; i++)
            loop.Add(Local(Bind(region.Args[i]), _stacks.IsTakenOnRead(n.Inputs[i])
                ? Rt("TakeLayer", Ref(n.Inputs[i]), loopVar)
                : Rt("Select", Ref(n.Inputs[i]), Lit(0L), loopVar)));
        for (int i = carried + stacked; i < region.Args.Length; i++) _locals[region.Args[i]] = _locals[n.Inputs[i]];
        _loopDepth++;
        EmitBlock(region, loop);
        for (int k = carried; k < n.Outputs.Length; k++)
        {
            var copy = _stacks.IsStack(n.Outputs[k]) && !_stacks.OwnedByIteration(region.Results[k], region);
            // Timed under --profile too: saving a layer's activations was a copy of all of them before LayerStacks.
            (int Site, string Local)? timer = _options.Profile ? StartTimer(n, loop, "set_layer", 0, n.Outputs[k].Name) : null;
            var save = Rt(copy ? "SetLayerCopy" : "SetLayer", Ref(n.Outputs[k]), loopVar, Ref(region.Results[k]));
            // A carried value saved per layer (the residual stream each layer reads) is the loop's operand only in the
            // first iteration; later it is what the previous iteration made and kept, which nothing writes: kept as is.
            var c = region.Args.IndexOf(region.Results[k]);
            if (copy && c >= 0 && c < carried && !region.Args.Contains(region.Results[c]) && _stacks.OwnedByIteration(region.Results[c], region))
                loop.Add(IfStatement(BinaryExpression(SyntaxKind.EqualsExpression, loopVar, Lit(reverse ? count - 1 : 0L)), ExpressionStatement(save),
                    ElseClause(ExpressionStatement(Rt("SetLayer", Ref(n.Outputs[k]), loopVar, Ref(region.Results[k]))))));
            else loop.Add(ExpressionStatement(save));
            if (timer is var (site, local)) loop.Add(StopTimer(site, local));
        }
        _loopDepth--;
        // Next carried values leave the iteration's scope; the previous ones are freed unless they are the loop's own
        // operands (first iteration), which belong to the caller.
        var next = new List<(int Index, string Name)>();
        for (int i = 0; i < carried; i++)
        {
            var r = region.Results[i];
            if (ReferenceEquals(r, region.Args[i])) continue;
            var name = _names.Fresh(region.Args[i].Name + "_next");
            var isArg = region.Args.Contains(r);
            loop.Add(Local(name, Rt("Keep", isArg ? Rt("Identity", Ref(r)) : Ref(r))));
            next.Add((i, name));
        }
        var first = Lit(reverse ? count - 1 : 0L);
        foreach (var (i, name) in next)
        {
            loop.Add(IfStatement(BinaryExpression(SyntaxKind.NotEqualsExpression, loopVar, first),
                ExpressionStatement(InvocationExpression(MemberAccessExpression(SyntaxKind.SimpleMemberAccessExpression, Ref(region.Args[i]), IdentifierName("Dispose"))))));
            loop.Add(ExpressionStatement(AssignmentExpression(SyntaxKind.SimpleAssignmentExpression, Ref(region.Args[i]), IdentifierName(CSharpNames.Token(name)))));
        }
        var scoped = UsingStatement(Block(loop)).WithDeclaration(VariableDeclaration(IdentifierName("var"))
            .AddVariables(VariableDeclarator(CSharpNames.Token(_names.Fresh("layer_scope"))).WithInitializer(EqualsValueClause(Rt("Scope")))));
        body.Add(ForStatement(Block(scoped))
            .WithDeclaration(VariableDeclaration(ParseTypeName("long")).AddVariables(
                VariableDeclarator(loopVar.Identifier).WithInitializer(EqualsValueClause(first))))
            .WithCondition(reverse
                ? BinaryExpression(SyntaxKind.GreaterThanOrEqualExpression, loopVar, Lit(0L))
                : BinaryExpression(SyntaxKind.LessThanExpression, loopVar, Lit(count)))
            .AddIncrementors(PostfixUnaryExpression(reverse ? SyntaxKind.PostDecrementExpression : SyntaxKind.PostIncrementExpression, loopVar)));
        for (int i = 0; i < carried; i++) body.Add(Local(Bind(n.Outputs[i]), Ref(region.Args[i])));
    }

    private ExpressionSyntax Call(RtCall call, Node n) => Rt(call.Method, call.Args.Select(a => Arg(a, n)).ToArray());

    private ExpressionSyntax Arg(LArg a, Node n) => a switch
    {
        LInput i => Ref(n.Inputs[i.Index]),
        LAllInputs => Array("Tensor", n.Inputs.Select(Ref)),
        LNested nested => Call(nested.Call, n),
        LDevice => IdentifierName("device"),
        LLiteral { Value: string[] v } => Array("string", v.Select(Lit)),
        LLiteral { Value: long v } => Lit(v),
        LLiteral { Value: double v } => Lit(v),
        LLiteral { Value: string v } => Lit(v),
        LLiteral { Value: long[] v } => LongsField(v),
        LLiteral { Value: IR.DType v } => DType(v),
        LLiteral l => throw new InvalidOperationException($"{n.Op.Name}: cannot emit literal of type {l.Value.GetType().Name}"),
        _ => throw new InvalidOperationException($"{n.Op.Name}: unknown lowering argument {a.GetType().Name}"),
    };

    // ---- syntax helpers -----------------------------------------------------------------------------------------

    private string Bind(Value v) => _locals[v] = _names.Fresh(v.Name);

    private IdentifierNameSyntax Ref(Value v) => IdentifierName(CSharpNames.Token(_locals[v]));

    private static LocalDeclarationStatementSyntax Local(string name, ExpressionSyntax init) =>
        LocalDeclarationStatement(VariableDeclaration(IdentifierName("var"))
            .AddVariables(VariableDeclarator(CSharpNames.Token(name)).WithInitializer(EqualsValueClause(init))));

    private static InvocationExpressionSyntax Rt(string method, params ExpressionSyntax[] args) =>
        InvocationExpression(MemberAccessExpression(SyntaxKind.SimpleMemberAccessExpression, IdentifierName("Rt"), IdentifierName(method)))
            .AddArgumentListArguments(args.Select(Argument).ToArray());

    private static ExpressionSyntax Lit(string s) => LiteralExpression(SyntaxKind.StringLiteralExpression, Literal(s));

    private static ExpressionSyntax Lit(long v) => v < 0
        ? PrefixUnaryExpression(SyntaxKind.UnaryMinusExpression, Lit(-v))
        : LiteralExpression(SyntaxKind.NumericLiteralExpression, Literal(v));

    private static ExpressionSyntax Lit(double v) => Number(v, "double", x =>
    {
        var text = x.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        if (!text.Contains('.') && !text.Contains('E')) text += ".0";
        return Literal(text, x);
    });

    /// <summary>A float literal (<c>0.5F</c>): a constant inside a fused loop's kernel, which computes in fp32.</summary>
    private static ExpressionSyntax Lit(float v) => Number(v, "float", x => Literal((float)x));

    /// <summary>An int literal, negative ones as a unary minus.</summary>
    private static ExpressionSyntax Int(int v) => v < 0
        ? PrefixUnaryExpression(SyntaxKind.UnaryMinusExpression, Int(-v))
        : LiteralExpression(SyntaxKind.NumericLiteralExpression, Literal(v));

    /// <summary>A floating-point literal of <paramref name="type"/>: NaN and infinities by name, a negative value (or
    /// −0) as a unary minus over the literal of its magnitude.</summary>
    private static ExpressionSyntax Number(double v, string type, Func<double, SyntaxToken> literal)
    {
        if (double.IsNaN(v)) return ParseExpression(type + ".NaN");
        if (double.IsPositiveInfinity(v)) return ParseExpression(type + ".PositiveInfinity");
        if (double.IsNegativeInfinity(v)) return ParseExpression(type + ".NegativeInfinity");
        if (v < 0 || (v == 0 && double.IsNegative(v))) return PrefixUnaryExpression(SyntaxKind.UnaryMinusExpression, Number(-v, type, literal));
        return LiteralExpression(SyntaxKind.NumericLiteralExpression, literal(v));
    }

    private static ExpressionSyntax Longs(IEnumerable<long> values) => Array("long", values.Select(Lit));

    /// <summary>A static readonly field holding <paramref name="values"/> (named after them, e.g. <c>L_4_512_768</c>;
    /// one per distinct array). The runtime only reads these arrays, so every call and step shares one.</summary>
    private IdentifierNameSyntax LongsField(long[] values) => ArrayField("long", "L", values);

    /// <summary>A static readonly <paramref name="type"/>[] field holding <paramref name="values"/>, named
    /// <paramref name="prefix"/> and the values (<c>m</c> for minus), one per distinct type and values.</summary>
    private IdentifierNameSyntax ArrayField(string type, string prefix, long[] values)
    {
        var key = prefix + "_" + (values.Length == 0 ? "empty"
            : string.Join("_", values.Select(v => v < 0 ? $"m{-v}" : v.ToString(System.Globalization.CultureInfo.InvariantCulture))));
        if (!_arrayFields.TryGetValue(key, out var name))
        {
            name = _names.Fresh(key);
            _arrayFields[key] = name;
            var items = type == "int" ? values.Select(v => Int(checked((int)v))) : values.Select(Lit);
            _constants.Add(FieldDeclaration(VariableDeclaration(ParseTypeName(type + "[]"))
                    .AddVariables(VariableDeclarator(CSharpNames.Token(name)).WithInitializer(EqualsValueClause(Array(type, items)))))
                .AddModifiers(Token(SyntaxKind.PrivateKeyword), Token(SyntaxKind.StaticKeyword), Token(SyntaxKind.ReadOnlyKeyword)));
        }
        return IdentifierName(CSharpNames.Token(name));
    }

    private static ExpressionSyntax Array(string elementType, IEnumerable<ExpressionSyntax> items) =>
        ArrayCreationExpression(ArrayType(ParseTypeName(elementType)).AddRankSpecifiers(ArrayRankSpecifier(SingletonSeparatedList<ExpressionSyntax>(OmittedArraySizeExpression()))))
            .WithInitializer(InitializerExpression(SyntaxKind.ArrayInitializerExpression, SeparatedList(items)));

    private static ExpressionSyntax DType(IR.DType t) => ParseExpression(t switch
    {
        IR.DType.F32 => "ScalarType.Float32",
        IR.DType.BF16 => "ScalarType.BFloat16",
        IR.DType.I32 => "ScalarType.Int32",
        IR.DType.F64 => "ScalarType.Float64",
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    });
}
