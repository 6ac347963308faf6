namespace PaLM.Runtime;

/// <summary>
/// The logical device mesh: named axes with sizes. Device ids (ranks) are row-major over the axes, first axis major,
/// so every backend (threads in one process, MPI ranks) numbers devices the same way.
/// </summary>
public sealed class MeshShape
{
    private readonly string[] _names;
    private readonly long[] _sizes;
    private readonly long[] _strides;   // rank = Σ coords[k]·strides[k]

    /// <summary>A mesh with the given axes (distinct, non-empty names; sizes ≥ 1).</summary>
    public MeshShape(IReadOnlyList<string> names, IReadOnlyList<long> sizes)
    {
        ArgumentNullException.ThrowIfNull(names);
        ArgumentNullException.ThrowIfNull(sizes);
        if (names.Count != sizes.Count)
            throw new ArgumentException($"The mesh has {names.Count} axis names but {sizes.Count} sizes.", nameof(sizes));
        _names = [.. names];
        _sizes = [.. sizes];
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int k = 0; k < _names.Length; k++)
        {
            if (string.IsNullOrEmpty(_names[k]))
                throw new ArgumentException($"Mesh axis {k} has an empty name.", nameof(names));
            if (!seen.Add(_names[k]))
                throw new ArgumentException($"Mesh axis '{_names[k]}' is named twice.", nameof(names));
            if (_sizes[k] < 1)
                throw new ArgumentException($"Mesh axis '{_names[k]}' has size {_sizes[k]}; sizes must be at least 1.", nameof(sizes));
        }
        _strides = new long[_sizes.Length];
        long count = 1;
        for (int k = _sizes.Length - 1; k >= 0; k--)
        {
            _strides[k] = count;
            count = count > int.MaxValue / _sizes[k]
                ? throw new ArgumentException($"The mesh ({this}) has more than {int.MaxValue} devices.", nameof(sizes))
                : count * _sizes[k];
        }
        DeviceCount = (int)count;
    }

    /// <summary>The mesh of one device and no axes (unsharded execution).</summary>
    public static MeshShape Single { get; } = new([], []);

    /// <summary>The axis names, major first (a copy).</summary>
    public string[] AxisNames => (string[])_names.Clone();

    /// <summary>The axis sizes, in the order of <see cref="AxisNames"/> (a copy).</summary>
    public long[] AxisSizes => (long[])_sizes.Clone();

    /// <summary>The number of devices: the product of the axis sizes.</summary>
    public int DeviceCount { get; }

    /// <summary>The coordinates of device <paramref name="rank"/>, one per axis.</summary>
    public long[] Coords(int rank)
    {
        CheckRank(rank);
        var coords = new long[_sizes.Length];
        for (int k = 0; k < coords.Length; k++)
            coords[k] = rank / _strides[k] % _sizes[k];
        return coords;
    }

    /// <summary>The device at <paramref name="coords"/> (one per axis, each in range).</summary>
    public int Rank(long[] coords)
    {
        ArgumentNullException.ThrowIfNull(coords);
        if (coords.Length != _sizes.Length)
            throw new ArgumentException($"Expected {_sizes.Length} coordinates for mesh ({this}), got {coords.Length}.", nameof(coords));
        long rank = 0;
        for (int k = 0; k < coords.Length; k++)
        {
            if (coords[k] < 0 || coords[k] >= _sizes[k])
                throw new ArgumentOutOfRangeException(nameof(coords), $"Coordinate {coords[k]} is outside axis '{_names[k]}' of size {_sizes[k]}.");
            rank += coords[k] * _strides[k];
        }
        return (int)rank;
    }

    /// <summary>The size of <paramref name="axis"/>.</summary>
    public long Size(string axis) => _sizes[AxisIndex(axis)];

    /// <summary>The position of <paramref name="axis"/> among the mesh axes; an <see cref="ArgumentException"/> if it is not one.</summary>
    public int AxisIndex(string axis)
    {
        ArgumentNullException.ThrowIfNull(axis);
        int k = Array.IndexOf(_names, axis);
        if (k < 0)
            throw new ArgumentException(
                $"Unknown mesh axis '{axis}'; the mesh has {(_names.Length == 0 ? "no axes" : "axes " + string.Join(", ", _names))}.", nameof(axis));
        return k;
    }

    /// <summary>The number of devices in a group over <paramref name="axes"/>: the product of their sizes.</summary>
    public long GroupSize(string[] axes)
    {
        long size = 1;
        foreach (var k in AxisIndices(axes))
            size *= _sizes[k];
        return size;
    }

    /// <summary>
    /// The position of device <paramref name="rank"/> within its group over <paramref name="axes"/>: its coordinates on
    /// those axes read as a row-major number in the order listed (first listed = major).
    /// </summary>
    public long GroupIndex(int rank, string[] axes)
    {
        CheckRank(rank);
        long index = 0;
        foreach (var k in AxisIndices(axes))
            index = index * _sizes[k] + rank / _strides[k] % _sizes[k];
        return index;
    }

    /// <summary>
    /// The devices sharing every coordinate of <paramref name="rank"/> outside <paramref name="axes"/>, ordered by
    /// <see cref="GroupIndex"/>; the device itself is at position GroupIndex(rank, axes).
    /// </summary>
    public int[] GroupMembers(int rank, string[] axes)
    {
        CheckRank(rank);
        var ks = AxisIndices(axes);
        long baseRank = rank;
        foreach (var k in ks)
            baseRank -= rank / _strides[k] % _sizes[k] * _strides[k];   // zero the group's own coordinates
        var members = new int[GroupSize(axes)];
        for (int g = 0; g < members.Length; g++)
        {
            long r = baseRank, rest = g;
            for (int j = ks.Length - 1; j >= 0; j--)   // last listed axis is minor
            {
                r += rest % _sizes[ks[j]] * _strides[ks[j]];
                rest /= _sizes[ks[j]];
            }
            members[g] = (int)r;
        }
        return members;
    }

    /// <summary>The positions of <paramref name="axes"/> among the mesh axes; rejects unknown and repeated axes.</summary>
    public int[] AxisIndices(string[] axes)
    {
        ArgumentNullException.ThrowIfNull(axes);
        var ks = new int[axes.Length];
        for (int j = 0; j < axes.Length; j++)
        {
            ks[j] = AxisIndex(axes[j]);
            if (Array.IndexOf(ks, ks[j], 0, j) >= 0)
                throw new ArgumentException($"Mesh axis '{axes[j]}' is listed twice in [{string.Join(", ", axes)}].", nameof(axes));
        }
        return ks;
    }

    /// <summary>Axes as <c>name=size</c>, comma-separated, e.g. <c>data=2, model=2</c>.</summary>
    public override string ToString() =>
        _names.Length == 0 ? "(1 device)" : string.Join(", ", _names.Select((n, k) => $"{n}={_sizes[k]}"));

    private void CheckRank(int rank)
    {
        if (rank < 0 || rank >= DeviceCount)
            throw new ArgumentOutOfRangeException(nameof(rank), $"Rank {rank} is outside the mesh ({this}) of {DeviceCount} devices.");
    }
}
