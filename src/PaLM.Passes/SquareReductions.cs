using PaLM.IR;

namespace PaLM.Passes;

/// <summary>
/// <c>sum(square(x))</c> and <c>mean(square(x))</c>, where the square is read by nothing else, become
/// <c>sum_squares(x)</c> and <c>mean_squares(x)</c>: one pass over x instead of writing x² to a fresh tensor and
/// reading it back. The training step's optimizer does this for every parameter (the global gradient norm, and
/// Adafactor's RMS of the update and of the parameter), on tensors as large as a stacked weight (56 MB for palm-cpu's
/// w_down), whose squared temporaries were the step's main source of fresh memory and page faults. Runs on the
/// per-device program; a partial sum of squares over a split dim is reduced as the sum's was.
/// </summary>
public static class SquareReductions
{
    public const string Name = "fuse-square-reductions";

    public static (Graph Graph, int Count) Run(Graph g) => BlockFacts.FuseIntoConsumers(g, (n, producer, uses) =>
        n.Op.Name is "sum" or "mean" && producer.TryGetValue(n.Inputs[0], out var sq) && sq.Op.Name == "square"
        && uses[n.Inputs[0]] == 1 && !n.Attr<DimsAttr>("over").Names.IsEmpty
            ? (sq, new Node(OpTable.Get(n.Op.Name == "sum" ? "sum_squares" : "mean_squares"), [sq.Inputs[0]], n.Outputs, n.Attrs, [], n.Loc))
            : null);
}
