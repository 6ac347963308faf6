using PaLM.Runtime.Native;
using static TorchSharp.torch;

namespace PaLM.Runtime;

/// <summary>
/// The inverse of <see cref="Rt.ShardOf"/>: whole tensors from the devices' pieces. A one-device peer of a partitioned
/// program (the eager reference, a test) needs the whole parameters the devices' pieces were cut from to compute the
/// same steps.
/// </summary>
public static class Shards
{
    /// <summary>
    /// The whole tensor of <paramref name="spec"/> (its global shape, each dim split over its mesh axes) from every
    /// device's piece, indexed by rank: each piece is copied back to where <see cref="Rt.ShardSlice"/> cut it from, chunk
    /// GroupIndex(rank, axes) of GroupSize(axes) equal ones per dim. Replicas write the same place in turn.
    /// </summary>
    public static Tensor Assemble(MeshShape mesh, TensorSpec spec, IReadOnlyList<Tensor> pieces)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(pieces);
        if (pieces.Count != mesh.DeviceCount)
            throw new ArgumentException($"'{spec.Name}': {pieces.Count} pieces for a mesh of {mesh.DeviceCount} devices.", nameof(pieces));
        var axes = spec.DimAxes;
        var whole = empty(spec.Shape, pieces[0].dtype);
        for (int rank = 0; rank < pieces.Count; rank++)
        {
            using var scope = NewDisposeScope();
            var view = whole;
            for (int d = 0; d < spec.Shape.Length; d++)
            {
                long count = axes[d].Length == 0 ? 1 : mesh.GroupSize(axes[d]);
                if (count == 1) continue;
                long chunk = spec.Shape[d] / count;
                view = view.narrow(d, mesh.GroupIndex(rank, axes[d]) * chunk, chunk);
            }
            // copy_ would broadcast a piece of the wrong shape silently.
            if (!TensorMemory.SameShape(view, pieces[rank]))
                throw new ArgumentException(
                    $"'{spec.Name}': device {rank}'s piece is [{string.Join(", ", TensorMemory.Shape(pieces[rank]))}], its place in the whole [{string.Join(", ", TensorMemory.Shape(view))}].",
                    nameof(pieces));
            view.copy_(pieces[rank]);
        }
        return whole;
    }

    /// <summary>
    /// The whole tensors of <paramref name="program"/>'s <see cref="IGraphProgram.Parameters"/> (parameters and optimizer
    /// state) for <paramref name="seed"/>: what its devices' <see cref="IGraphProgram.InitParameters(DeviceContext, long)"/>
    /// cut their pieces from. Each device of an in-process mesh initializes its pieces (which communicates nothing), and
    /// the pieces are assembled; on one device, its own parameters.
    /// </summary>
    public static Tensor[] InitWhole(IGraphProgram program, long seed)
    {
        ArgumentNullException.ThrowIfNull(program);
        if (program.Mesh.DeviceCount == 1) return program.InitParameters(seed);
        var pieces = InProcessMesh.Run(program.Mesh, device => program.InitParameters(device, seed));
        try
        {
            var whole = new Tensor[program.Parameters.Count];
            for (int i = 0; i < whole.Length; i++)
            {
                var piece = new Tensor[pieces.Length];
                for (int rank = 0; rank < pieces.Length; rank++) piece[rank] = pieces[rank][i];
                whole[i] = Assemble(program.Mesh, program.Parameters[i], piece);
            }
            return whole;
        }
        finally
        {
            foreach (var device in pieces)
                foreach (var t in device) t.Dispose();
        }
    }
}
