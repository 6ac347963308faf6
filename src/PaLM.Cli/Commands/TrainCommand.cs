using System.CommandLine;
using System.Globalization;
using PaLM.CodeGen;
using PaLM.Passes;
using PaLM.Runtime.Training;
using Spectre.Console;

namespace PaLM.Cli.Commands;

/// <summary>
/// <c>palmc train FILE [--mesh ...] [--remat ...] [--steps N] [--data PATH] [--checkpoint DIR]</c>: compiles the whole
/// training step (forward, backward, Adafactor update), partitions it over the mesh, and trains on in-process virtual
/// devices (or, with --backend mpi, as one rank of an mpirun job), printing one line per step and a progress display;
/// resumes from the newest complete checkpoint in DIR.
/// </summary>
internal static class TrainCommand
{
    public static Command Create()
    {
        var file = Common.FileArgument();
        var mesh = Common.MeshOption();
        var steps = new Option<long>("--steps") { Description = "train until this step", DefaultValueFactory = _ => 100 };
        var data = new Option<string?>("--data") { Description = $"a text file to train on, byte-level (default: the licence texts in {ByteCorpus.DefaultFolder})" };
        var checkpoint = new Option<string?>("--checkpoint") { Description = "checkpoint folder: resumed from if it holds one, saved to every --checkpoint-every steps" };
        var every = new Option<long>("--checkpoint-every") { Description = "steps between checkpoints", DefaultValueFactory = _ => 100 };
        var seed = new Option<long>("--seed") { Description = "seed of the initial parameters", DefaultValueFactory = _ => 0 };
        var dataSeed = new Option<long>("--data-seed") { Description = "seed of the batches", DefaultValueFactory = _ => 1 };
        var curve = new Option<string?>("--curve") { Description = "write the loss curve: PATH.csv and PATH.svg (default: into the checkpoint folder, if any)" };
        var backend = MpiSession.Option();
        var training = new TrainingOptions();
        var cmd = new Command("train", "Compile the training step and train on every device of the mesh.") { file, mesh, steps, data, checkpoint, every, seed, dataSeed, curve, backend };
        training.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(() =>
        {
            // Under --backend mpi this process is one rank: every rank prepares, then all agree before anyone trains.
            using var mpi = MpiSession.Start(r.GetValue(backend));
            var total = r.GetValue(steps);
            (PaLM.IR.Graph, CompiledTraining, Runtime.IGraphProgram, ByteCorpus) Prepare()
            {
                if (total < 1) throw new UserError("error: --steps must be at least 1");
                if (r.GetValue(every) < 1) throw new UserError("error: --checkpoint-every must be at least 1");
                try { Runtime.Distributed.FailPoints.Compile(); }
                catch (InvalidOperationException e) { throw new UserError($"error: {e.Message}"); }
                var corpus = Common.LoadCorpus(r.GetValue(data));
                var graph = Common.LoadToCompile(r.GetValue(file)!);
                var comp = training.Compile(r, graph, r.GetValue(mesh));
                if (mpi is not null && comp.Spmd.Mesh.DeviceCount != mpi.World.Size)
                    throw new UserError($"error: the mesh ({comp.Spmd.Mesh}) has {comp.Spmd.Mesh.DeviceCount} device(s) but this MPI job has {mpi.World.Size} rank(s); "
                        + $"--backend mpi runs one device per rank (palmc launch -np {comp.Spmd.Mesh.DeviceCount} -- ...)");
                return (graph, comp, RoslynCompiler.CompileInMemory(Emitter.Emit(comp.Local, options: new CodeGenOptions { DonateUpdatedArguments = true })), corpus);
            }
            var (g, compiled, program, corpus) = mpi is null ? Prepare() : mpi.Agree(() =>
            {
                var p = Prepare();
                var optionsText = string.Join("\n", $"steps={total}", $"seed={r.GetValue(seed)}", $"data_seed={r.GetValue(dataSeed)}",
                    $"checkpoint={(r.GetValue(checkpoint) is { } c ? Path.GetFullPath(c) : "")}", $"every={r.GetValue(every)}",
                    $"corpus={p.Item4.Name}:{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(p.Item4.Bytes.Span))}",
                    $"remat={p.Item2.RematName}", $"fusion={p.Item2.Fusion is not null}", $"optimizer={p.Item2.Training.Options.Describe()}");
                return (p, new MpiSession.Fingerprint(PaLM.IR.Printer.Print(p.Item2.Local), p.Item2.Spmd.Mesh.ToString(), optionsText));
            });
            var memory = TrainingMemory.Of(compiled);
            Console.WriteLine($"{g.Name}: {compiled.Spmd.Mesh.DeviceCount} device(s) [{compiled.Spmd.Mesh}]{(mpi is null ? "" : $", one per MPI rank ({mpi.World.Size} ranks, {mpi.World.ThreadsPerRank} thread(s) each)")}, remat {compiled.RematName}" +
                (compiled.Fusion is { } f ? $", fusion: {f}" : ", no fusion"));
            Console.WriteLine($"optimizer: {compiled.Training.Options.Describe()}");
            Console.WriteLine($"data: {corpus.Name} ({corpus.Length:N0} bytes); memory/device: {PlanCommand.Bytes(memory.Total)} " +
                $"(activations {PlanCommand.Bytes(memory.Activations)}); recomputed {memory.RecomputedFlopsPerStep:N0} FLOPs/step");

            var options = new TrainerOptions
            {
                Steps = total, Corpus = corpus, Seed = r.GetValue(seed), DataSeed = r.GetValue(dataSeed),
                CheckpointDir = r.GetValue(checkpoint), CheckpointEvery = r.GetValue(every), Backend = mpi?.Backend,
            };
            TrainResult result = null!;
            try
            {
            var interactive = mpi is null && AnsiConsole.Profile.Capabilities.Interactive && !Console.IsOutputRedirected;
            if (interactive)
            {
                AnsiConsole.Progress().AutoClear(true).Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask("training", maxValue: total);
                        result = Trainer.Run(program, options, s =>
                        {
                            AnsiConsole.WriteLine(s.Format());
                            task.Value = s.Step;
                            task.Description = string.Create(CultureInfo.InvariantCulture, $"loss {s.Loss:F3}");
                        }, m => AnsiConsole.WriteLine(m));
                    });
            }
            else result = Trainer.Run(program, options, s => Console.WriteLine(s.Format()), Console.WriteLine);
            }
            catch (InvalidOperationException e) when (e.Message.Contains("checkpoint", StringComparison.Ordinal) || e.Message.Contains("corpus", StringComparison.Ordinal))
            {
                throw new UserError($"error: {e.Message}");
            }

            if (mpi is { Rank: not 0 })
                return 0;   // rank 0 reports the run
            if (result.Steps.Count == 0)
            {
                Console.WriteLine($"nothing to do: the checkpoint is already at step {result.ResumedFrom}");
                return 0;
            }
            var curvePath = r.GetValue(curve) ?? (options.CheckpointDir is { } ck ? Path.Combine(ck, "loss") : null);
            if (curvePath is not null)
            {
                var dir = Path.GetDirectoryName(Path.GetFullPath(curvePath))!;
                Directory.CreateDirectory(dir);
                var vocab = g.DimsByName.TryGetValue("vocab", out var v) ? Math.Log(v.Size) : (double?)null;
                LossCurve.WriteCsv(curvePath + ".csv", result.Steps);
                LossCurve.WriteSvg(curvePath + ".svg", result.Steps, $"{g.Name}: training loss ({compiled.Spmd.Mesh}, remat {compiled.RematName})", vocab);
                Console.WriteLine($"loss curve: {curvePath}.csv, {curvePath}.svg");
            }
            var times = result.Steps.Skip(Math.Min(2, result.Steps.Count - 1)).Select(s => s.Seconds).Order().ToList();
            var first = result.Steps[0];
            var last = result.Steps[^1];
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"steps {first.Step}-{last.Step}: loss {first.Loss:F4} -> {last.Loss:F4}; median step {times[times.Count / 2] * 1e3:F1} ms ({last.Tokens / times[times.Count / 2]:F0} tokens/s)"));
            return 0;
        }));
        return cmd;
    }
}
