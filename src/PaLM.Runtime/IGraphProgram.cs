using TorchSharp;

namespace PaLM.Runtime;

/// <summary>Name, element type and global shape of one program argument or result.</summary>
public sealed record TensorSpec(string Name, torch.ScalarType DType, long[] Shape, string[] Dims);

/// <summary>
/// What every generated program implements. The same class serves the in-memory path (<c>palmc run</c>)
/// and the compiled program (<c>palmc compile</c>), so both compute the same thing.
/// </summary>
public interface IGraphProgram
{
    /// <summary>The graph's name (the DSL file's stem).</summary>
    string Name { get; }

    /// <summary>Parameters in the order <see cref="Forward"/> takes them; layer-repeated ones carry a leading layer dim.</summary>
    IReadOnlyList<TensorSpec> Parameters { get; }

    /// <summary>Inputs in the order <see cref="Forward"/> takes them.</summary>
    IReadOnlyList<TensorSpec> Inputs { get; }

    /// <summary>Outputs in the order <see cref="Forward"/> returns them.</summary>
    IReadOnlyList<TensorSpec> Outputs { get; }

    /// <summary>Creates every parameter from its DSL initializer with a seeded generator.</summary>
    torch.Tensor[] InitParameters(long seed);

    /// <summary>Runs the graph. Results outlive the call (they are moved out of its dispose scope).</summary>
    torch.Tensor[] Forward(torch.Tensor[] parameters, torch.Tensor[] inputs);
}
