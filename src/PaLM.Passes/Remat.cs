using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Passes;

/// <summary>
/// A rematerialization policy: which values computed inside a <c>repeat</c> body (one layer) the forward pass saves for
/// the backward pass; everything else the backward pass needs is recomputed from what was saved. A layer's input (its
/// carried value) is always saved when needed: the backward pass cannot recompute it. Outside loops everything is
/// saved. The names follow jax.checkpoint's policies.
/// </summary>
public sealed class RematPolicy
{
    private RematPolicy(string name, string description, Func<Node, bool> saveable, bool fullySharded = false)
    {
        Name = name;
        Description = description;
        Saveable = saveable;
        FullyShardedResiduals = fullySharded;
    }

    public string Name { get; }
    public string Description { get; }

    /// <summary>Whether the outputs of this body node may be saved (otherwise they are recomputed when needed).</summary>
    public Func<Node, bool> Saveable { get; }

    /// <summary>Saved layer inputs are resharded over every mesh axis before they are kept (PaLM 540B's policy).</summary>
    public bool FullyShardedResiduals { get; }

    /// <summary>Save everything the backward pass needs (no recomputation).</summary>
    public static readonly RematPolicy None = new("none", "save every activation the backward pass reads", _ => true);

    /// <summary>Save only each layer's input; recompute the layer in the backward pass.</summary>
    public static readonly RematPolicy Full = new("full", "save only each layer's input, recompute the rest of the layer", _ => false);

    /// <summary>
    /// Save the outputs of contractions without batch dims (the weight matmuls), recompute the rest: JAX's
    /// dots_with_no_batch_dims_saveable. Attention's score and value einsums share batch dims and are recomputed.
    /// </summary>
    public static readonly RematPolicy Dots = new("dots", "save weight-matmul outputs (no batch dims), recompute the rest", IsDotWithoutBatchDims);

    /// <summary>
    /// PaLM 540B (section 4 of the paper): per layer one activation is kept, fully sharded over the mesh, the rest
    /// rematerialized: <see cref="Full"/> with the saved layer input resharded over every mesh axis.
    /// </summary>
    public static readonly RematPolicy Palm = new("palm", "save each layer's input sharded over every mesh axis, recompute the rest", _ => false, fullySharded: true);

    /// <summary>The fixed policies, by name (<c>auto</c> chooses among these per layer to fit a memory budget).</summary>
    public static readonly ImmutableArray<RematPolicy> Fixed = [None, Full, Dots, Palm];

    public static readonly ImmutableArray<string> Names = ["none", "full", "dots", "palm", "auto"];

    public static RematPolicy Parse(string name) =>
        Fixed.FirstOrDefault(p => p.Name == name)
        ?? throw new ArgumentException($"unknown remat policy '{name}'; expected one of {string.Join(", ", Names)}");

    /// <summary>An einsum of two operands whose shared subscripts are all contracted (a weight matmul).</summary>
    public static bool IsDotWithoutBatchDims(Node n)
    {
        if (!n.Op.IsMatmul) return false;
        var lists = n.Attr<DimListsAttr>("operands").Lists;
        var output = n.Attr<DimsAttr>("output").Names;
        if (lists.Length != 2) return false;
        return !lists[0].Intersect(lists[1]).Any(output.Contains);
    }

    public override string ToString() => Name;
}
