using System.Security.Cryptography;
using System.Text.Json.Nodes;
using PaLM.Runtime;
using PaLM.Runtime.Distributed;
using TorchSharp;
using static TorchSharp.torch;

namespace PaLM.Cli.Commands;

/// <summary>
/// <c>palmc bench --backend mpi --verify-collectives DIR</c> (hidden; run by the MPI tests under palmc launch): each
/// rank runs seeded random cases of every collective over every group of its mesh (2 ranks: data=2; 4: data=2, model=2)
/// through <see cref="MpiCollectives"/>, and the same cases on an in-process mesh of the same shape
/// (<see cref="InProcessMesh"/>, inside this rank), and writes one JSON line per case to DIR/rank-R.jsonl: shapes, the
/// SHA-256 of both results' bytes and their largest difference. The test judges the files: the rank only reports.
/// </summary>
internal static class MpiCollectivesCheck
{
    private static readonly string[] s_ops = ["AllGather", "ReduceScatter", "AllReduce", "AllToAll"];
    private static readonly ScalarType[] s_dtypes = [ScalarType.Float32, ScalarType.Float64, ScalarType.BFloat16, ScalarType.Int64];

    public static int Run(MpiSession mpi, string dir, int cases, long seed)
    {
        var world = mpi.World;
        var mesh = world.Size switch
        {
            1 => new MeshShape(["data"], [1]),
            4 => new MeshShape(["data", "model"], [2, 2]),
            _ => new MeshShape(["data"], [world.Size]),
        };
        string[][] axesChoices = mesh.AxisNames.Length == 2 ? [["data"], ["model"], ["data", "model"], ["model", "data"]] : [["data"]];
        Rt.Initialize(world.ThreadsPerRank);
        using var comm = new MpiCollectives(world, mesh);
        var random = new Random((int)seed);
        var lines = new List<string>();
        for (int k = 0; k < cases; k++)
        {
            using var scope = NewDisposeScope();
            var op = s_ops[k % s_ops.Length];
            var dtype = s_dtypes[random.Next(s_dtypes.Length)];
            var axes = axesChoices[random.Next(axesChoices.Length)];
            long g = mesh.GroupSize(axes);
            int rank = random.Next(1, 4);
            var shape = Enumerable.Range(0, rank).Select(_ => (long)random.Next(1, 4)).ToArray();
            long dim = random.Next(rank), dim2 = random.Next(rank);
            if (op is "ReduceScatter" or "AllToAll") shape[dim] *= g;   // chunks must divide
            // Every rank can build every rank's input: seeded by (seed, case, rank).
            Tensor Input(int r)
            {
                var gen = new Generator((ulong)(seed * 1_000_003 + k * 101 + r));
                return dtype == ScalarType.Int64 ? randint(-1000, 1000, shape, ScalarType.Int64, generator: gen) : randn(shape, generator: gen).to_type(dtype);
            }
            Tensor Apply(ICollectives c, Tensor x) => op switch
            {
                "AllGather" => c.AllGather(x, dim, axes),
                "ReduceScatter" => c.ReduceScatter(x, dim, axes),
                "AllReduce" => c.AllReduce(x, axes),
                _ => c.AllToAll(x, dim, dim2, axes),
            };
            var viaMpi = Apply(comm, Input(world.Rank));
            var inProcess = InProcessMesh.Run(mesh, d => Apply(d.Comm, Input(d.Rank)).MoveToOuterDisposeScope(), threadsPerDevice: 1);
            var expected = inProcess[world.Rank];
            var sameShape = viaMpi.shape.SequenceEqual(expected.shape);
            double diff = sameShape ? viaMpi.to_type(ScalarType.Float64).sub(expected.to_type(ScalarType.Float64)).abs().max().item<double>() : double.NaN;
            double scale = expected.to_type(ScalarType.Float64).abs().max().item<double>();
            lines.Add(new JsonObject
            {
                ["case"] = k, ["rank"] = world.Rank, ["op"] = op, ["dtype"] = dtype.ToString(),
                ["axes"] = new JsonArray([.. axes.Select(a => (JsonNode)a)]),
                ["group"] = new JsonArray([.. mesh.GroupMembers(world.Rank, axes).Select(m => (JsonNode)m)]),
                ["input_shape"] = new JsonArray([.. shape.Select(n => (JsonNode)n)]),
                ["dim"] = dim, ["dim2"] = dim2,
                ["mpi_shape"] = new JsonArray([.. viaMpi.shape.Select(n => (JsonNode)n)]),
                ["inprocess_shape"] = new JsonArray([.. expected.shape.Select(n => (JsonNode)n)]),
                ["mpi_sha256"] = Sha(viaMpi), ["inprocess_sha256"] = Sha(expected),
                ["max_abs_diff"] = diff, ["max_abs"] = scale,
            }.ToJsonString());
            foreach (var t in inProcess) t.Dispose();
        }
        Directory.CreateDirectory(dir);
        File.WriteAllLines(Path.Combine(dir, $"rank-{world.Rank}.jsonl"), lines);
        world.Barrier();
        if (mpi.Rank == 0) Console.WriteLine($"{cases} collective cases on {world.Size} ranks ({mesh}) written to {dir}");
        return 0;
    }

    private static string Sha(Tensor t)
    {
        using var c = t.contiguous();
        return Convert.ToHexStringLower(SHA256.HashData(c.bytes));
    }
}
