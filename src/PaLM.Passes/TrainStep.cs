using System.Collections.Immutable;
using PaLM.IR;

namespace PaLM.Passes;

/// <summary>
/// PaLM's optimizer settings (section 5 of the paper), every one overridable. Adafactor without factorization, which
/// is Adam with parameter scaling: the step size is the learning rate times max(eps2, RMS(W)).
/// </summary>
public sealed record TrainOptions
{
    /// <summary>The learning rate is min(PeakLearningRate, 1/sqrt(step)): 1e-2 for 10k steps, then decaying.</summary>
    public double PeakLearningRate { get; init; } = 1e-2;

    /// <summary>First-moment decay (PaLM uses momentum 0.9 on the clipped update).</summary>
    public double Beta1 { get; init; } = 0.9;

    /// <summary>beta2 = 1 - step^-Beta2Decay (0.8 in PaLM): recent gradients weigh more early in training.</summary>
    public double Beta2Decay { get; init; } = 0.8;

    /// <summary>Global-norm gradient clipping threshold (0 disables).</summary>
    public double ClipNorm { get; init; } = 1.0;

    /// <summary>Adafactor's update clipping: the update's RMS is capped at this (0 disables).</summary>
    public double UpdateClip { get; init; } = 1.0;

    /// <summary>Added to squared gradients (Adafactor's eps1).</summary>
    public double Epsilon1 { get; init; } = 1e-30;

    /// <summary>Floor of the parameter RMS in parameter scaling (Adafactor's eps2).</summary>
    public double Epsilon2 { get; init; } = 1e-3;

    /// <summary>Decoupled weight decay of lr^WeightDecayPower per step (PaLM: lr², "dynamic weight decay"); negative disables.</summary>
    public double WeightDecayPower { get; init; } = 2.0;

    public string Describe() => FormattableString.Invariant(
        $"Adafactor (unfactored, parameter scaling): lr=min({PeakLearningRate}, 1/sqrt(step)), beta1={Beta1}, beta2=1-step^-{Beta2Decay}, clip-norm={ClipNorm}, update-clip={UpdateClip}, weight decay=")
        + (WeightDecayPower < 0 ? "none" : FormattableString.Invariant($"lr^{WeightDecayPower}"));
}

/// <summary>A training step graph and what went into it.</summary>
public sealed class TrainingGraph
{
    public required Graph Graph { get; init; }
    public required GradientInfo Gradients { get; init; }
    public required RematPolicy Remat { get; init; }
    public required TrainOptions Options { get; init; }

    /// <summary>Per parameter (in graph order): its gradient and its two optimizer-state arguments.</summary>
    public required IReadOnlyList<(GraphArg Parameter, Value Grad, GraphArg M, GraphArg V)> Slots { get; init; }
}

/// <summary>
/// Builds the whole training step as one graph: the forward loss, its gradient (<see cref="Autodiff"/>), global-norm
/// clipping and the Adafactor update, with the optimizer state as arguments sharded like their parameters
/// (ZeRO-style: each device holds the state of its parameter shards) and the new parameters and state as outputs that
/// replace them (<see cref="Graph.OutputUpdates"/>). The step number is an input: the learning rate and beta2 depend
/// on it, so one compiled step serves every step.
/// </summary>
public static class TrainStep
{
    public const string StepInput = "step";

    public static TrainingGraph Build(Graph g, TrainOptions? options = null, RematPolicy? remat = null, Func<Value, Sharding?>? residualSharding = null,
        IReadOnlyList<RematPolicy>? loopPolicies = null)
    {
        options ??= new TrainOptions();
        remat ??= RematPolicy.None;
        var lossIndex = g.OutputNames.IndexOf("loss");
        if (lossIndex < 0)
            throw new InvalidOperationException($"graph '{g.Name}' has no output named 'loss' to train on (outputs: {string.Join(", ", g.OutputNames)})");
        var loss = g.Body.Results[lossIndex];
        if (g.Args.Any(a => a.Kind == ArgKind.State) || !g.OutputUpdates.IsDefaultOrEmpty)
            throw new InvalidOperationException($"graph '{g.Name}' is already a training step");
        if (g.Body.AllValues().Any(v => v.Name == StepInput))
            throw new InvalidOperationException($"graph '{g.Name}' already has a value named '{StepInput}', the name the training step gives its step-number input");

        var b = GraphBuilder.Continuing(g);
        var top = new List<Node>();
        // Per-loop policies (remat auto) by the order of the top-level loops.
        var loops = g.Body.Nodes.Where(n => n.Op.HasRegion).ToList();
        if (loopPolicies is not null && loopPolicies.Count != loops.Count)
            throw new InvalidOperationException($"{loopPolicies.Count} loop remat policies for {loops.Count} loops");
        var grads = Autodiff.Build(g, loss, n => loopPolicies?[loops.IndexOf(n)] ?? remat, b, top, residualSharding);

        var args = g.Args.ToList();
        var step = b.NewValue(StepInput, new TensorType(DType.F32));
        var slots = new List<(GraphArg, Value, GraphArg, GraphArg)>();
        foreach (var p in g.Parameters)
        {
            // Optimizer state starts at zero and is split exactly like its parameter.
            GraphArg State(string suffix) => new(b.NewValue(p.Value.Name + suffix, p.Value.Type, p.Value.Sharding, p.Value.Loc), ArgKind.State, new Init(InitKind.Constant, 0));
            slots.Add((p, grads.Grads[p.Value], State(".m"), State(".v")));
        }
        args.AddRange(slots.Select(s => s.Item3));
        args.AddRange(slots.Select(s => s.Item4));
        args.Add(new GraphArg(step, ArgKind.Input, null));

        var opt = new Optimizer(b, top, options);
        // Parameters a layer loop slices per iteration: their leading dim counts layers, not matrix rows.
        var stacked = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        foreach (var loop in loops)
        {
            var c = (int)loop.Attr<IntAttr>("carried").Value;
            foreach (var v in loop.Inputs.Skip(c).Take((int)loop.Attr<IntAttr>("stacked").Value)) stacked.Add(v);
        }
        // remat auto splits stacked parameters into layer groups first: the parameter split is stacked too.
        foreach (var n in g.Body.Nodes.Where(n => n.Op.Name == "split" && n.Outputs.Any(stacked.Contains)))
            stacked.Add(n.Inputs[0]);
        var (outputs, names, updates) = opt.Emit(loss, step, slots, args, stacked);
        var graph = new Graph(g.Name, g.Dims, g.Mesh, [.. args], new Block([.. args.Select(a => a.Value)], [.. top], [.. outputs]), [.. names])
        {
            OutputUpdates = [.. updates],
        };
        Verifier.Verify(graph);
        return new TrainingGraph { Graph = graph, Gradients = grads, Remat = remat, Options = options, Slots = slots };
    }

    private sealed class Optimizer(GraphBuilder b, List<Node> top, TrainOptions o)
    {
        private Value Op(string op, string hint, params Value[] inputs) => b.Apply(top, OpTable.Get(op), inputs, GraphBuilder.Attrs(), [hint])[0];

        private Value Op(string op, string hint, Value x, params (string, Attr)[] attrs) => b.Apply(top, OpTable.Get(op), [x], GraphBuilder.Attrs(attrs), [hint])[0];

        private Value K(double v) => b.Apply(top, OpTable.Get("constant"), [], GraphBuilder.Attrs(("value", new FloatAttr(v)), ("dtype", new DTypeAttr(DType.F32))), ["c"])[0];

        /// <summary>Reduces the squares of <paramref name="x"/> over <paramref name="over"/> (all dims: a scalar) with sum or mean.</summary>
        private Value Squares(Value x, string reduce, string hint, IEnumerable<Dim> over)
        {
            var sq = Op("square", hint + ".sq", x);
            var dims = over.Select(d => d.Name).ToImmutableArray();
            return dims.IsEmpty ? sq : Op(reduce, hint, sq, ("over", new DimsAttr(dims)));
        }

        /// <summary>
        /// Root mean square of each weight matrix: over every dim, or, for a parameter stacked over layers, over every
        /// dim but the layer dim (one RMS per layer, as Adafactor scales each matrix by its own).
        /// </summary>
        private Value Rms(Value x, string hint, bool perLayer) =>
            Op("sqrt", hint, Squares(x, "mean", hint + ".ms", x.Type.Dims.Skip(perLayer ? 1 : 0)));

        public (List<Value> Outputs, List<string> Names, List<int> Updates) Emit(Value loss, Value step,
            IReadOnlyList<(GraphArg P, Value G, GraphArg M, GraphArg V)> slots, List<GraphArg> args, IReadOnlySet<Value> stacked)
        {
            // Schedules from the step number: lr = min(peak, 1/sqrt(step)), beta2 = 1 - step^-decay.
            var lr = Op("minimum", "lr", K(o.PeakLearningRate), Op("rsqrt", "lr.decay", step));
            var beta2 = Op("sub", "beta2", K(1), Op("exp", "beta2.pow", Op("mul", "beta2.log", K(-o.Beta2Decay), Op("log", "log_step", step))));
            var oneMinusBeta2 = Op("sub", "one_minus_beta2", K(1), beta2);

            // Global-norm clipping: g * clip / max(norm, clip).
            Value? total = null;
            foreach (var s in slots)
            {
                var ss = Squares(s.G, "sum", s.P.Value.Name + ".grad_sq", s.G.Type.Dims);
                total = total is null ? ss : Op("add", "grad_sq", total, ss);
            }
            var gradNorm = Op("sqrt", "grad_norm", total ?? K(0));
            var clipScale = o.ClipNorm > 0 ? Op("div", "clip_scale", K(o.ClipNorm), Op("maximum", "clip_den", gradNorm, K(o.ClipNorm))) : null;

            var outputs = new List<Value> { loss, gradNorm, lr };
            var names = new List<string> { "loss", "grad_norm", "lr" };
            var updates = new List<int> { -1, -1, -1 };
            var newState = new List<(Value, string, int)>();
            foreach (var s in slots)
            {
                var name = s.P.Value.Name;
                var sharding = s.P.Value.Sharding;
                Value Pin(string op, string hint, params Value[] inputs) => b.Apply(top, OpTable.Get(op), inputs, GraphBuilder.Attrs(), [hint], s.P.Value.Loc, sharding: sharding)[0];

                var g = clipScale is null ? s.G : Op("mul", name + ".g", s.G, clipScale);
                // v = beta2 v + (1 - beta2)(g^2 + eps1);  u = g / sqrt(v)
                var g2 = Op("add", name + ".g2", Op("square", name + ".gsq", g), K(o.Epsilon1));
                var v = Pin("add", name + ".v.new", Op("mul", name + ".v.decay", s.V.Value, beta2), Op("mul", name + ".v.add", g2, oneMinusBeta2));
                var u = Op("mul", name + ".u", g, Op("rsqrt", name + ".v.rsqrt", v));
                // Update clipping: u / max(1, RMS(u) / d).
                if (o.UpdateClip > 0)
                    u = Op("div", name + ".u.clipped", u, Op("maximum", name + ".u.den", K(1), Op("mul", name + ".u.ratio", Rms(u, name + ".u.rms", stacked.Contains(s.P.Value)), K(1 / o.UpdateClip))));
                // Momentum on the clipped update.
                var m = Pin("add", name + ".m.new", Op("mul", name + ".m.decay", s.M.Value, K(o.Beta1)), Op("mul", name + ".m.add", u, K(1 - o.Beta1)));
                // Parameter scaling: step = lr * max(eps2, RMS(W)); decoupled weight decay lr^power.
                var stepSize = Op("mul", name + ".step_size", lr, Op("maximum", name + ".scale", K(o.Epsilon2), Rms(s.P.Value, name + ".rms", stacked.Contains(s.P.Value))));
                var w = s.P.Value;
                if (o.WeightDecayPower >= 0)
                {
                    var decay = Op("exp", name + ".wd", Op("mul", name + ".wd.log", K(o.WeightDecayPower), Op("log", name + ".lr.log", lr)));
                    w = Op("sub", name + ".decayed", w, Op("mul", name + ".wd.term", w, decay));
                }
                var newW = Pin("sub", name + ".new", w, Op("mul", name + ".update", m, stepSize));
                outputs.Add(newW);
                names.Add(name);
                updates.Add(args.IndexOf(s.P));
                newState.Add((m, name + ".m", args.IndexOf(s.M)));
                newState.Add((v, name + ".v", args.IndexOf(s.V)));
            }
            foreach (var (v, n, i) in newState)
            {
                outputs.Add(v);
                names.Add(n);
                updates.Add(i);
            }
            return (outputs, names, updates);
        }
    }
}
