using System.Diagnostics;
using System.Globalization;
using static TorchSharp.torch;

namespace PaLM.Runtime.Training;

/// <summary>How to run a compiled training step.</summary>
public sealed record TrainerOptions
{
    /// <summary>Train until this step (1-based; a resumed run continues from the checkpoint's step).</summary>
    public required long Steps { get; init; }

    /// <summary>The text the batches are cut from.</summary>
    public required ByteCorpus Corpus { get; init; }

    /// <summary>Seed of the initial parameters.</summary>
    public long Seed { get; init; }

    /// <summary>Seed of the batches (step s always gets the same batch, so resuming replays exactly).</summary>
    public long DataSeed { get; init; } = 1;

    /// <summary>Folder of checkpoints: resumed from when it holds one, written to every <see cref="CheckpointEvery"/> steps.</summary>
    public string? CheckpointDir { get; init; }

    /// <summary>Steps between checkpoints (the last step is always saved when a folder is given).</summary>
    public long CheckpointEvery { get; init; } = 100;

    /// <summary>Intra-op threads per device (default: the cores divided among the devices).</summary>
    public int? ThreadsPerDevice { get; init; }

    /// <summary>
    /// Record time per op on device 0 from this step on (null: off). The program must be compiled with profiling on
    /// (<see cref="IGraphProgram.ProfileSites"/>); the profile is returned in <see cref="TrainResult.Profile"/>.
    /// </summary>
    public long? ProfileFromStep { get; init; }

    /// <summary>Where <see cref="ProfileFromStep"/> records (null: a new profile), for a caller that resets it mid-run.</summary>
    public OpProfile? Profile { get; init; }

    /// <summary>
    /// Runs on device 0's thread after each step while every other device waits at a barrier, so nothing else runs
    /// meanwhile: how a benchmark interleaves a peer's step (the eager reference) with the generated one.
    /// </summary>
    public Action<long>? BetweenSteps { get; init; }

    /// <summary>
    /// Asked on device 0 after each step (after <see cref="BetweenSteps"/>): true stops every device after this step,
    /// before <see cref="Steps"/>. Device 0's answer reaches the others through a one-element all-reduce, so the devices
    /// of a mesh agree on their last step in process and over MPI alike: how a benchmark ends a warm-up it could not
    /// size in advance.
    /// </summary>
    public Func<long, bool>? StopAfter { get; init; }

    /// <summary>
    /// Where the devices run (null: <see cref="InProcessBackend"/>, every device in this process). With one device per
    /// process (<see cref="Distributed.MpiBackend"/>), each process loads its own shard of a checkpoint, the processes
    /// agree on the step, and each writes its own shard of a checkpoint (the folder must be on a file system they all see).
    /// </summary>
    public IMeshBackend? Backend { get; init; }
}

/// <summary>One training step as seen from device 0 (every device computes the same replicated scalars).</summary>
public sealed record StepReport(long Step, double Loss, double GradNorm, double LearningRate, double Seconds, long Tokens)
{
    public double TokensPerSecond => Tokens / Seconds;

    public string Format() => string.Create(CultureInfo.InvariantCulture,
        $"step {Step,5}  loss {Loss,9:F5}  grad_norm {GradNorm,8:F4}  lr {LearningRate:0.####e+0}  {Seconds * 1e3,8:F1} ms  {TokensPerSecond,9:F0} tokens/s");
}

/// <summary>What a training run did.</summary>
public sealed record TrainResult(long FirstStep, long LastStep, IReadOnlyList<StepReport> Steps, long? ResumedFrom)
{
    /// <summary>Device 0's time per op over the profiled steps (see <see cref="TrainerOptions.ProfileFromStep"/>).</summary>
    public OpProfile? Profile { get; init; }
}

/// <summary>
/// Runs a compiled training step (a program whose results replace its parameters and optimizer state, see
/// <see cref="TensorSpec.Updates"/>) for many steps on every device of its mesh: in-process virtual devices, one thread
/// each, or this process's one device of an MPI job (<see cref="TrainerOptions.Backend"/>). Batches come from a <see cref="ByteCorpus"/>, the step number is fed as the <c>step</c> input, and
/// checkpoints are saved (every device's shards) and resumed from atomically.
/// </summary>
public static class Trainer
{
    public static TrainResult Run(IGraphProgram program, TrainerOptions options, Action<StepReport>? onStep = null, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(program);
        ArgumentNullException.ThrowIfNull(options);
        var layout = Layout.Of(program);
        Rt.Initialize();
        // Byte tokens index the vocabulary: a graph with fewer than 256 entries cannot take arbitrary bytes.
        var vocab = program.Parameters.Select(p => Array.IndexOf(p.Dims, "vocab") is var d and >= 0 ? p.Shape[d] : -1).FirstOrDefault(v => v > 0, -1);
        if (vocab is > 0 and < ByteTokenizer.VocabSize && options.Corpus.Bytes.Span.IndexOfAnyInRange((byte)vocab, (byte)255) is var at and >= 0)
            throw new InvalidOperationException($"the corpus {options.Corpus.Name} has byte {options.Corpus.Bytes.Span[at]} at offset {at}, outside the graph's vocab of {vocab} (byte-level tokens need vocab = 256)");

        var backend = options.Backend ?? InProcessBackend.Instance;
        var reports = new List<StepReport>();
        if (options.ProfileFromStep is not null && program.ProfileSites.Count == 0)
            throw new InvalidOperationException($"program '{program.Name}' was not compiled with profiling on");
        var profile = options.ProfileFromStep is null ? null : options.Profile ?? new OpProfile(program.ProfileSites);

        if (backend.InProcess)
        {
            // Every device here: load the whole checkpoint once; device 0 saves every device's shards.
            var resume = LoadResume(program, options, null, log);
            long first = (resume?.Step ?? 0) + 1, last = options.Steps;
            var shared = new IReadOnlyList<(string, Tensor)>[program.Mesh.DeviceCount];
            backend.Run(program.Mesh, device =>
            {
                var persistent = resume is null ? program.InitParameters(device, options.Seed) : Restore(program, resume.Devices[device.Rank]);
                var ran = RunSteps(program, layout, options, device, persistent, first, reports, onStep, profile,
                    step => SaveCheckpoint(program, device, persistent, shared, options.CheckpointDir!, step, options));
                if (device.Rank == 0) last = ran;   // every device stopped after the same step
            }, options.ThreadsPerDevice);
            return new TrainResult(first, last, reports, resume?.Step) { Profile = profile };
        }

        // One device per process: each loads only its own shard, and the devices agree on the step before training.
        long firstStep = 1, lastStep = options.Steps;
        long? resumedFrom = null;
        backend.Run(program.Mesh, device =>
        {
            var resume = LoadResume(program, options, device.Rank, device.Rank == 0 ? log : null);
            AgreeOnResumeStep(device, resume?.Step ?? -1, options.CheckpointDir);
            resumedFrom = resume?.Step;
            firstStep = (resume?.Step ?? 0) + 1;
            var persistent = resume is null ? program.InitParameters(device, options.Seed) : Restore(program, resume.Devices[device.Rank]);
            if (resume is not null)
                foreach (var (_, t) in resume.Devices[device.Rank]) t.Dispose();
            lastStep = RunSteps(program, layout, options, device, persistent, firstStep, reports, onStep, profile,
                step => SaveCheckpointSharded(program, device, persistent, options.CheckpointDir!, step, options));
        }, options.ThreadsPerDevice);
        return new TrainResult(firstStep, lastStep, reports, resumedFrom) { Profile = profile };
    }

    /// <summary>The newest complete checkpoint in the options' folder (all devices, or only <paramref name="device"/>'s shard), checked against the program.</summary>
    private static CheckpointData? LoadResume(IGraphProgram program, TrainerOptions options, int? device, Action<string>? log)
    {
        if (options.CheckpointDir is not { } dir || !Directory.Exists(dir))
            return null;
        var resume = Checkpoint.LoadLatest(dir, w => log?.Invoke($"checkpoint: {w}"), device);
        if (resume is null)
            return null;
        if (resume.Devices.Count != program.Mesh.DeviceCount)
            throw new InvalidOperationException($"the checkpoint in {dir} (step {resume.Step}) holds {resume.Devices.Count} devices' shards, this mesh has {program.Mesh.DeviceCount}");
        if (resume.Metadata.TryGetValue("program", out var name) && name != program.Name)
            throw new InvalidOperationException($"the checkpoint in {dir} was written by program '{name}', not '{program.Name}'");
        // Shards belong to mesh positions: the same device count on another mesh would load them onto the wrong devices.
        if (resume.Metadata.TryGetValue("mesh", out var meshText) && meshText != program.Mesh.ToString())
            throw new InvalidOperationException($"the checkpoint in {dir} holds shards for mesh {meshText}, this program runs on {program.Mesh}");
        log?.Invoke($"resuming from step {resume.Step} ({dir})");
        return resume;
    }

    /// <summary>
    /// Every device chose a checkpoint on its own (checking only its own file's digest); they must have chosen the same
    /// step (-1: none), or some would resume from a checkpoint that another found damaged.
    /// </summary>
    private static void AgreeOnResumeStep(DeviceContext device, long step, string? dir)
    {
        var all = device.Mesh.AxisNames;
        if (all.Length == 0) return;
        using var scope = NewDisposeScope();
        var steps = device.Comm.AllGather(tensor(new[] { step }), 0, all).data<long>().ToArray();
        if (steps.All(s => s == steps[0])) return;
        string Say(long s) => s < 0 ? "no checkpoint" : $"step {s}";
        var groups = steps.Select((s, r) => (s, r)).GroupBy(x => x.s).Select(g => $"{Say(g.Key)} on rank(s) {string.Join(", ", g.Select(x => x.r))}");
        throw new InvalidOperationException($"the devices disagree about the newest complete checkpoint in {dir}: {string.Join("; ", groups)} (a damaged shard?); remove or repair the newer checkpoint");
    }

    /// <summary>One device's training loop: steps <paramref name="first"/>..Steps, checkpoints through <paramref name="save"/>.</summary>
    private static long RunSteps(IGraphProgram program, Layout layout, TrainerOptions options, DeviceContext device, Tensor[] persistent,
        long first, List<StepReport> reports, Action<StepReport>? onStep, OpProfile? profile, Action<long> save)
    {
        long last = first - 1;
        try
        {
            for (long step = first; step <= options.Steps; step++)
            {
                if (device.Rank == 0 && step >= options.ProfileFromStep && device.Profile is null) device.Profile = profile;
                var sw = Stopwatch.StartNew();
                using (var scope = NewDisposeScope())
                {
                    var (tokens, targets) = options.Corpus.Batch(options.DataSeed, step, layout.Batch, layout.Seq);
                    var inputs = new Tensor[program.Inputs.Count];
                    inputs[layout.Tokens] = Rt.ShardOf(device, tokens, program.Inputs[layout.Tokens].DimAxes);
                    inputs[layout.Targets] = Rt.ShardOf(device, targets, program.Inputs[layout.Targets].DimAxes);
                    inputs[layout.Step] = tensor((float)step, ScalarType.Float32);
                    var outs = program.Forward(device, persistent, inputs);
                    // The new parameters and state replace the old ones and outlive this step's scope. A program compiled
                    // with donated arguments may have updated one in place: then the new tensor is the old object.
                    foreach (var (output, target) in layout.Updates)
                    {
                        if (!ReferenceEquals(persistent[target], outs[output])) persistent[target].Dispose();
                        persistent[target] = outs[output].MoveToOuterDisposeScope();
                    }
                    if (device.Rank == 0)
                    {
                        double Scalar(int i) => i < 0 ? double.NaN : outs[i].to_type(ScalarType.Float64).item<double>();
                        var report = new StepReport(step, Scalar(layout.Loss), Scalar(layout.GradNorm), Scalar(layout.Lr), 0, layout.Batch * layout.Seq);
                        sw.Stop();
                        report = report with { Seconds = sw.Elapsed.TotalSeconds };
                        reports.Add(report);
                        onStep?.Invoke(report);
                    }
                }
                if (options.BetweenSteps is { } between)
                {
                    device.Comm.Barrier();
                    if (device.Rank == 0) between(step);
                    device.Comm.Barrier();
                }
                last = step;
                bool stopping = options.StopAfter is { } stop && AgreeToStop(device, device.Rank == 0 && stop(step));
                if (options.CheckpointDir is not null && (step % options.CheckpointEvery == 0 || step == options.Steps || stopping))
                    save(step);
                if (stopping) break;
            }
        }
        finally
        {
            foreach (var t in persistent) t.Dispose();
        }
        return last;
    }

    /// <summary>Whether any device voted to stop (only device 0 votes): the same answer on every device.</summary>
    private static bool AgreeToStop(DeviceContext device, bool vote)
    {
        using var scope = NewDisposeScope();
        var votes = device.Comm.AllReduce(tensor(new[] { vote ? 1f : 0f }), device.Mesh.AxisNames);
        return votes.item<float>() > 0;
    }

    /// <summary>Every device hands its shards to device 0, which writes one checkpoint while the others wait.</summary>
    private static void SaveCheckpoint(IGraphProgram program, DeviceContext device, Tensor[] persistent,
        IReadOnlyList<(string, Tensor)>[] shared, string dir, long step, TrainerOptions options)
    {
        shared[device.Rank] = program.Parameters.Select((p, i) => (p.Name, persistent[i])).ToList();
        device.Comm.Barrier();
        if (device.Rank == 0)
        {
            Checkpoint.Save(dir, new CheckpointData(step, [.. shared], Metadata(program, options)));
        }
        device.Comm.Barrier();
    }

    /// <summary>
    /// One device per process: device 0 opens the step's staging folder, every device writes its own shard, and device 0
    /// writes the manifest and renames the folder into place (Checkpoint.Sharded.cs); barriers keep the phases apart.
    /// </summary>
    private static void SaveCheckpointSharded(IGraphProgram program, DeviceContext device, Tensor[] persistent, string dir, long step, TrainerOptions options)
    {
        if (device.Rank == 0) Checkpoint.BeginSharded(dir, step);
        device.Comm.Barrier();
        Checkpoint.SaveShard(dir, step, device.Rank, program.Parameters.Select((p, i) => (p.Name, persistent[i])).ToList());
        device.Comm.Barrier();
        if (device.Rank == 0) Checkpoint.CommitSharded(dir, step, program.Mesh.DeviceCount, Metadata(program, options));
        device.Comm.Barrier();
    }

    private static Dictionary<string, string> Metadata(IGraphProgram program, TrainerOptions options) => new()
    {
        ["program"] = program.Name,
        ["mesh"] = program.Mesh.ToString(),
        ["seed"] = options.Seed.ToString(CultureInfo.InvariantCulture),
        ["data_seed"] = options.DataSeed.ToString(CultureInfo.InvariantCulture),
        ["corpus"] = options.Corpus.Name,
    };

    private static Tensor[] Restore(IGraphProgram program, IReadOnlyList<(string Name, Tensor Tensor)> saved)
    {
        var byName = saved.ToDictionary(s => s.Name, s => s.Tensor);
        var restored = program.Parameters.Select(p =>
        {
            if (!byName.TryGetValue(p.Name, out var t))
                throw new InvalidOperationException($"the checkpoint has no tensor '{p.Name}'");
            if (t.dtype != p.DType)
                throw new InvalidOperationException($"checkpoint tensor '{p.Name}' is {t.dtype}, the program wants {p.DType}");
            var local = p.Shape.Select((n, d) => p.DimAxes[d].Length == 0 ? n : n / program.Mesh.GroupSize(p.DimAxes[d])).ToArray();
            if (!t.shape.SequenceEqual(local))
                throw new InvalidOperationException($"checkpoint tensor '{p.Name}' has shape [{string.Join(", ", t.shape)}], this program's shard is [{string.Join(", ", local)}]");
            return t.clone();
        }).ToArray();
        program.ArrangeParameters(restored);
        return restored;
    }

    /// <summary>Where a training program keeps what the trainer feeds and reads.</summary>
    private sealed record Layout(int Tokens, int Targets, int Step, int Loss, int GradNorm, int Lr, long Batch, long Seq, List<(int Output, int Target)> Updates)
    {
        public static Layout Of(IGraphProgram p)
        {
            int In(string name)
            {
                for (int i = 0; i < p.Inputs.Count; i++) if (p.Inputs[i].Name == name) return i;
                throw new InvalidOperationException($"program '{p.Name}' is not a training step: it has no input '{name}' (compile it with --train)");
            }
            int Out(string name)
            {
                for (int i = 0; i < p.Outputs.Count; i++) if (p.Outputs[i].Name == name) return i;
                return -1;
            }
            var (tokens, targets, step) = (In("tokens"), In("targets"), In("step"));
            var shape = p.Inputs[tokens].Shape;
            if (shape.Length != 2 || !p.Inputs[targets].Shape.SequenceEqual(shape))
                throw new InvalidOperationException($"program '{p.Name}': tokens and targets must both be [batch, seq]");
            var updates = p.Outputs.Select((o, i) => (i, o.Updates)).Where(x => x.Updates >= 0).ToList();
            if (updates.Count == 0)
                throw new InvalidOperationException($"program '{p.Name}' updates no parameters: it is not a training step (compile it with --train)");
            if (Out("loss") < 0) throw new InvalidOperationException($"program '{p.Name}' has no 'loss' output");
            return new Layout(tokens, targets, step, Out("loss"), Out("grad_norm"), Out("lr"), shape[0], shape[1], updates);
        }
    }
}
