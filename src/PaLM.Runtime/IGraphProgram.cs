using TorchSharp;

namespace PaLM.Runtime;

/// <summary>
/// Name, element type and global shape of one program argument or result, and for each dim the mesh axes that split
/// it (a device holds its piece; none = whole on every device).
/// </summary>
public sealed record TensorSpec(string Name, torch.ScalarType DType, long[] Shape, string[] Dims, string[][]? Sharding = null)
{
    /// <summary>What the tensor is to the program (a trained parameter, optimizer state, data, or a result).</summary>
    public TensorRole Role { get; init; }

    /// <summary>For a result of a training step: the index in <see cref="IGraphProgram.Parameters"/> of the tensor it replaces for the next step, else -1.</summary>
    public int Updates { get; init; } = -1;

    /// <summary>The per-dim mesh axes (empty lists when the program is not partitioned).</summary>
    public string[][] DimAxes => Sharding ?? Dims.Select(_ => Array.Empty<string>()).ToArray();
}

/// <summary>The role of a program argument or result.</summary>
public enum TensorRole { Parameter, State, Input, Output }

/// <summary>
/// What every generated program implements. The same class serves the in-memory path (<c>palmc run</c>)
/// and the compiled program (<c>palmc compile</c>), so both compute the same thing.
/// </summary>
public interface IGraphProgram
{
    /// <summary>The graph's name (the DSL file's stem).</summary>
    string Name { get; }

    /// <summary>The mesh the program was partitioned for (no axes: one device). Every device runs this same program.</summary>
    MeshShape Mesh { get; }

    /// <summary>
    /// What persists across steps, in the order <c>Forward</c> takes it: parameters (layer-repeated ones carry a leading
    /// layer dim), then, in a training step, the optimizer state (<see cref="TensorSpec.Role"/> says which).
    /// </summary>
    IReadOnlyList<TensorSpec> Parameters { get; }

    /// <summary>Inputs in the order <c>Forward</c> takes them.</summary>
    IReadOnlyList<TensorSpec> Inputs { get; }

    /// <summary>Outputs in the order <c>Forward</c> returns them.</summary>
    IReadOnlyList<TensorSpec> Outputs { get; }

    /// <summary>
    /// Creates <paramref name="device"/>'s piece of every parameter: the global tensor from its DSL initializer with a
    /// seeded generator (the same on every device), then the device's slice.
    /// </summary>
    torch.Tensor[] InitParameters(DeviceContext device, long seed);

    /// <summary>
    /// Lays this device's persistent tensors out as the program reads them fastest, in place in the array (values
    /// unchanged): a generated program keeps the weights each fused projection joins side by side in one buffer
    /// (<see cref="Rt.GroupSideBySide"/>). <see cref="InitParameters(DeviceContext, long)"/> returns them laid out;
    /// a host that makes them otherwise (a restored checkpoint) calls this. Any layout computes the same results.
    /// </summary>
    void ArrangeParameters(torch.Tensor[] persistent) { }

    /// <summary>
    /// Runs the program on <paramref name="device"/> with its pieces of the parameters and inputs; collectives talk to
    /// the other devices of its mesh. Results outlive the call (they are moved out of its dispose scope).
    /// </summary>
    torch.Tensor[] Forward(DeviceContext device, torch.Tensor[] parameters, torch.Tensor[] inputs);

    /// <summary>
    /// The op statements a program compiled with profiling on times, indexed by site id (empty otherwise): see
    /// <see cref="DeviceContext.Profile"/>.
    /// </summary>
    IReadOnlyList<OpSite> ProfileSites => [];

    /// <summary>Parameters of a single-device program.</summary>
    torch.Tensor[] InitParameters(long seed) => InitParameters(DeviceContext.Single, seed);

    /// <summary>Runs a single-device program.</summary>
    torch.Tensor[] Forward(torch.Tensor[] parameters, torch.Tensor[] inputs) => Forward(DeviceContext.Single, parameters, inputs);
}
