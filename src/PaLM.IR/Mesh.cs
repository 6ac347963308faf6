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
}

/// <summary>
/// How a tensor is laid out over the mesh: for each tensor dim (positionally), the ordered mesh axes that split it
/// (empty = replicated along it). A user annotation and a propagated sharding have the same form.
/// </summary>
public sealed class Sharding : IEquatable<Sharding>
{
    public Sharding(ImmutableArray<ImmutableArray<string>> dimAxes) => DimAxes = dimAxes;

    public ImmutableArray<ImmutableArray<string>> DimAxes { get; }

    public static Sharding Replicated(int rank) =>
        new(Enumerable.Repeat(ImmutableArray<string>.Empty, rank).ToImmutableArray());

    public IEnumerable<string> AllAxes => DimAxes.SelectMany(a => a);

    public bool Equals(Sharding? other) =>
        other is not null && DimAxes.Length == other.DimAxes.Length &&
        DimAxes.Zip(other.DimAxes).All(p => p.First.SequenceEqual(p.Second));

    public override bool Equals(object? obj) => Equals(obj as Sharding);

    public override int GetHashCode() => DimAxes.Aggregate(0, (h, a) => HashCode.Combine(h, string.Join(",", a)));

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
        return "{" + string.Join(", ", parts) + "}";
    }
}
