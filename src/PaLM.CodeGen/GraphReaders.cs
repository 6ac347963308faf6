using PaLM.IR;

namespace PaLM.CodeGen;

/// <summary>
/// Every read of every value in a graph, loop bodies included: the node and operand position reading it, or a null
/// node (position -1) where a block yields it as a result. What the buffer decisions of code generation
/// (<see cref="LayerStacks"/>, <see cref="ConcatDestinations"/>) look up before deciding that a value has no other reader.
/// </summary>
internal static class GraphReaders
{
    public static Dictionary<Value, List<(Node? User, int Operand)>> Of(Graph g)
    {
        var readers = new Dictionary<Value, List<(Node? User, int Operand)>>(ReferenceEqualityComparer.Instance);
        void Read(Value v, Node? user, int operand)
        {
            if (!readers.TryGetValue(v, out var list)) readers[v] = list = [];
            list.Add((user, operand));
        }
        void Walk(Block b)
        {
            foreach (var n in b.Nodes)
            {
                for (int i = 0; i < n.Inputs.Length; i++) Read(n.Inputs[i], n, i);
                foreach (var r in n.Regions) Walk(r);
            }
            foreach (var v in b.Results) Read(v, null, -1);
        }
        Walk(g.Body);
        return readers;
    }
}
