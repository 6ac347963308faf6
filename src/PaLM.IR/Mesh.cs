using System.Collections.Immutable;

namespace PaLM.IR;

/// <summary>One named axis of a device mesh.</summary>
public readonly record struct MeshAxis(string Name, long Size);

/// <summary>A logical device mesh: named axes with sizes, major to minor (row-major device ids).</summary>
public sealed class Mesh
{
    public Mesh(ImmutableArray<MeshAxis> axes) => Axes = axes.IsDefault ? ImmutableArray<MeshAxis>.Empty : axes;

    public ImmutableArray<MeshAxis> Axes { get; }

    public long DeviceCount => Axes.Aggregate(1L, (n, a) => checked(n * a.Size));

    public bool HasAxis(string name) => Axes.Any(a => a.Name == name);

    public long SizeOf(string name) => Axes.First(a => a.Name == name).Size;

    public override string ToString() => string.Join(", ", Axes.Select(a => $"{a.Name}={a.Size}"));

    /// <summary>The product of the sizes of <paramref name="axes"/> (how many shards they make).</summary>
    public long Product(IEnumerable<string> axes) => axes.Aggregate(1L, (n, a) => checked(n * SizeOf(a)));

    /// <summary>
    /// Parses the CLI form <c>data=4,model=2</c> (spaces allowed). Throws <see cref="FormatException"/> with the reason.
    /// </summary>
    public static Mesh Parse(string text)
    {
        var axes = new List<MeshAxis>();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries))
        {
            var kv = part.Split('=', StringSplitOptions.TrimEntries);
            if (kv.Length != 2 || kv[0].Length == 0 || !kv[0].All(c => char.IsAsciiLetterOrDigit(c) || c == '_') || char.IsAsciiDigit(kv[0][0]))
                throw new FormatException($"mesh axis '{part}' is not NAME=SIZE (e.g. data=4,model=2)");
            if (!long.TryParse(kv[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var size) || size < 1)
                throw new FormatException($"mesh axis '{kv[0]}': size '{kv[1]}' is not a positive integer");
            if (axes.Any(a => a.Name == kv[0])) throw new FormatException($"mesh axis '{kv[0]}' is given twice");
            axes.Add(new MeshAxis(kv[0], size));
        }
        return new Mesh(axes.ToImmutableArray());
    }

    /// <summary>
    /// This mesh overridden by <paramref name="over"/>: the override's axes in its order, then any axis declared here but
    /// not overridden, at size 1 (so annotations naming it stay valid and mean "not split").
    /// </summary>
    public Mesh OverriddenBy(Mesh over) =>
        new(over.Axes.Concat(Axes.Where(a => !over.HasAxis(a.Name)).Select(a => a with { Size = 1 })).ToImmutableArray());
}

/// <summary>
/// How a tensor is laid out over the mesh: for each tensor dim (positionally), the ordered mesh axes that split it
/// (empty = replicated along it; the first axis listed is the major one), plus the partial axes: mesh axes over
/// which each device holds a summand and the true value is the sum (Shardy's "unreduced", DTensor's Partial(sum)).
/// A user annotation and a propagated sharding have the same form; annotations are never partial.
/// </summary>
public sealed class Sharding : IEquatable<Sharding>
{
    public Sharding(ImmutableArray<ImmutableArray<string>> dimAxes, ImmutableArray<string> partial = default)
    {
        DimAxes = dimAxes;
        Partial = partial.IsDefault ? ImmutableArray<string>.Empty : partial;
    }

    public ImmutableArray<ImmutableArray<string>> DimAxes { get; }

    /// <summary>Axes with a pending sum, in the order they became partial.</summary>
    public ImmutableArray<string> Partial { get; }

    public int Rank => DimAxes.Length;

    public static Sharding Replicated(int rank) =>
        new(Enumerable.Repeat(ImmutableArray<string>.Empty, rank).ToImmutableArray());

    public IEnumerable<string> AllAxes => DimAxes.SelectMany(a => a);

    public bool IsReplicated => DimAxes.All(a => a.IsEmpty) && Partial.IsEmpty;

    public Sharding WithDim(int dim, ImmutableArray<string> axes) => new(DimAxes.SetItem(dim, axes), Partial);

    public Sharding WithPartial(IEnumerable<string> partial) => new(DimAxes, partial.ToImmutableArray());

    /// <summary>How many pieces dim <paramref name="dim"/> is cut into on <paramref name="mesh"/>.</summary>
    public long Shards(int dim, Mesh mesh) => mesh.Product(DimAxes[dim]);

    /// <summary>The per-device type: each sharded dim divided by its shard count (the partitioner checks divisibility).</summary>
    public TensorType LocalType(TensorType global, Mesh mesh) =>
        global.WithDims(global.Dims.Select((d, i) => LocalDim(d, Shards(i, mesh))));

    /// <summary>
    /// The per-device dim of <paramref name="d"/> cut into <paramref name="shards"/>: named <c>d/shards</c> so that a
    /// local name always has one size (the per-device IR is verified like any other).
    /// </summary>
    public static Dim LocalDim(Dim d, long shards) => shards == 1 ? d : new Dim($"{d.Name}/{shards}", d.Size / shards);

    public bool Equals(Sharding? other) =>
        other is not null && DimAxes.Length == other.DimAxes.Length &&
        DimAxes.Zip(other.DimAxes).All(p => p.First.SequenceEqual(p.Second)) && Partial.SequenceEqual(other.Partial);

    public override bool Equals(object? obj) => Equals(obj as Sharding);

    public override int GetHashCode() => DimAxes.Aggregate(Partial.Length, (h, a) => HashCode.Combine(h, string.Join(",", a)));

    /// <summary>Text form against a type, e.g. <c>{batch:(pod,data), d_model:model}</c>; replicated dims are left out.</summary>
    public string Format(TensorType type)
    {
        var parts = new List<string>();
        for (int i = 0; i < DimAxes.Length; i++)
        {
            var axes = DimAxes[i];
            if (axes.IsEmpty) continue;
            var name = i < type.Rank ? type.Dims[i].Name : $"#{i}";
            parts.Add(axes.Length == 1 ? $"{name}:{axes[0]}" : $"{name}:({string.Join(",", axes)})");
        }
        if (!Partial.IsEmpty) parts.Add(Partial.Length == 1 ? $"partial:{Partial[0]}" : $"partial:({string.Join(",", Partial)})");
        return "{" + string.Join(", ", parts) + "}";
    }
}
