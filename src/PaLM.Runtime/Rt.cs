using PaLM.Runtime.Native;
using TorchSharp;
using static TorchSharp.torch;
using RopeKey = (long S, long K, long Rank, long SeqAxis, long FeatureAxis, bool Inverse, TorchSharp.torch.ScalarType DType);

namespace PaLM.Runtime;

/// <summary>
/// The runtime facade generated code calls: a small set of tensor operations over TorchSharp.
/// Axis arguments are non-negative positional indices; broadcasting is positional (NumPy rules).
/// </summary>
public static class Rt
{
    private static readonly object s_initLock = new();
    private static bool s_initialized;

    /// <summary>Opens a dispose scope (one per step: tensors created inside are freed when it is disposed).</summary>
    public static IDisposable Scope() => torch.NewDisposeScope();

    /// <summary>Moves <paramref name="t"/> out of the current dispose scope so it outlives it.</summary>
    public static Tensor Keep(Tensor t) => t.MoveToOuterDisposeScope();

    /// <summary>
    /// Loads TorchSharp's native libraries (once) and sets the intra-op thread count
    /// (<paramref name="threads"/>, or the processor count on first use). Throws an
    /// <see cref="InvalidOperationException"/> explaining the cause when the native libraries cannot load.
    /// Also answers MKL's vendor check where that gives MKL its AVX-512 kernels (<see cref="MklDispatch"/>;
    /// <c>PALMC_MKL_AVX512=0</c> keeps MKL as shipped), which takes effect only if no BLAS product has run in the
    /// process before: call this before any TorchSharp matmul.
    /// </summary>
    public static void Initialize(int? threads = null)
    {
        lock (s_initLock)
        {
            if (s_initialized)
            {
                if (threads is int n)
                    torch.set_num_threads(n);
                return;
            }
            ThrowIfUnpatched();
            HeapTuning.Apply();
            try
            {
                torch.InitializeDeviceType(DeviceType.CPU);
                MklDispatch.Apply();      // before the first product: MKL fixes its kernels then
                torch.set_num_threads(threads ?? Environment.ProcessorCount);
                WarmVectorMath();
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new InvalidOperationException(LoadFailureMessage(e.GetBaseException().Message), e);
            }
            s_initialized = true;
        }
    }

    /// <summary>
    /// Runs MKL's vector math (VML: libtorch's fp32 exp, tanh, log, ...) once on this thread, so that its one-time setup
    /// is done before any other thread can call it.
    /// <para>
    /// Why: that setup races. When several threads make the process's first VML call at once (the devices of an
    /// <see cref="InProcessMesh"/> reaching their first layer norm or loss together), one of them can get a
    /// low-accuracy exp for that call: relative error 1.5e-4 against 6e-8, on 16345 of 16384 elements. Measured on this
    /// machine with MKL's vendor check answered (<see cref="MklDispatch"/>; as shipped, 0 of 60), eight threads racing a
    /// first exp in fresh processes: 6 of 60 had a thread with the low-accuracy result; with this call made first, 0 of
    /// 60, and also 0 of 60 when the call made first is a log (the setup is shared). In palmc it made one device's
    /// step-1 cross-entropy on a data=2,model=2 mesh off by 3e-6 relative, in 4 of 120 runs, so the in-process loss
    /// missed the same program's over MPI (MpiTests, tolerance 1e-6).
    /// </para>
    /// </summary>
    private static void WarmVectorMath()
    {
        using var scope = torch.NewDisposeScope();
        _ = torch.ones(64, 256).exp();
    }

    /// <summary>A CPU random generator with the given seed.</summary>
    public static Generator NewGenerator(long seed) => new((ulong)seed);

    /// <summary>A 0-d tensor holding <paramref name="value"/>. fp32 and fp64 are made directly in their type (the same
    /// value: a double rounds to float as libtorch's conversion rounds it): a step makes dozens of these, and the
    /// converting overload took 2.3 µs a call against 1.0.</summary>
    public static Tensor Constant(double value, ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => torch.tensor((float)value),
        ScalarType.Float64 => torch.tensor(value),
        _ => torch.tensor(value, dtype),
    };

    /// <summary>Samples N(0, std²) in fp32 with <paramref name="g"/>, then casts to <paramref name="dtype"/>.</summary>
    public static Tensor InitNormal(Generator g, long[] shape, double std, ScalarType dtype)
    {
        using var z = torch.randn(shape, ScalarType.Float32, generator: g);
        var scaled = z.mul(HeldScalars.Constant(std));
        if (dtype == ScalarType.Float32)
            return scaled;
        using (scaled)
            return scaled.to_type(dtype);
    }

    /// <summary>A tensor of <paramref name="shape"/> filled with <paramref name="value"/>.</summary>
    public static Tensor InitConstant(long[] shape, double value, ScalarType dtype) => torch.full(shape, HeldScalars.Constant(value), dtype);

    /// <summary>a + b.</summary>
    public static Tensor Add(Tensor a, Tensor b) => a.add(b, HeldScalars.One);

    /// <summary>a - b.</summary>
    public static Tensor Sub(Tensor a, Tensor b) => a.sub(b);

    /// <summary>a * b.</summary>
    public static Tensor Mul(Tensor a, Tensor b) => a.mul(b);

    // In-place forms: write into the first argument's buffer and return that same tensor object (TorchSharp's
    // in-place ops return their receiver). Generated code calls them only on buffers nothing else reads afterwards.

    /// <summary>a += b, in a's buffer.</summary>
    public static Tensor AddInPlace(Tensor a, Tensor b) => a.add_(b, HeldScalars.One);

    /// <summary>a -= b, in a's buffer.</summary>
    public static Tensor SubInPlace(Tensor a, Tensor b) => a.sub_(b);

    /// <summary>a *= b, in a's buffer.</summary>
    public static Tensor MulInPlace(Tensor a, Tensor b) => a.mul_(b);

    /// <summary>a /= b, in a's buffer.</summary>
    public static Tensor DivInPlace(Tensor a, Tensor b) => a.div_(b);

    /// <summary>-x, in x's buffer.</summary>
    public static Tensor NegInPlace(Tensor x) => x.neg_();

    /// <summary>exp(x), in x's buffer.</summary>
    public static Tensor ExpInPlace(Tensor x) => x.exp_();

    /// <summary>log(x), in x's buffer.</summary>
    public static Tensor LogInPlace(Tensor x) => x.log_();

    /// <summary>1/√x, in x's buffer.</summary>
    public static Tensor RsqrtInPlace(Tensor x) => x.rsqrt_();

    /// <summary>√x, in x's buffer.</summary>
    public static Tensor SqrtInPlace(Tensor x) => x.sqrt_();

    /// <summary>tanh(x), in x's buffer.</summary>
    public static Tensor TanhInPlace(Tensor x) => x.tanh_();

    /// <summary>sigmoid(x), in x's buffer.</summary>
    public static Tensor SigmoidInPlace(Tensor x) => x.sigmoid_();

    /// <summary>silu(x), in x's buffer.</summary>
    public static Tensor SiluInPlace(Tensor x) => nn.functional.silu(x, inplace: true);

    /// <summary>x², in x's buffer.</summary>
    public static Tensor SquareInPlace(Tensor x) => x.mul_(x);

    /// <summary>a / b.</summary>
    public static Tensor Div(Tensor a, Tensor b) => a.div(b);

    /// <summary>Elementwise max(a, b).</summary>
    public static Tensor Maximum(Tensor a, Tensor b) => torch.maximum(a, b);

    /// <summary>-x.</summary>
    public static Tensor Neg(Tensor x) => x.neg();

    /// <summary>eˣ.</summary>
    public static Tensor Exp(Tensor x) => x.exp();

    /// <summary>Natural logarithm.</summary>
    public static Tensor Log(Tensor x) => x.log();

    /// <summary>1/√x.</summary>
    public static Tensor Rsqrt(Tensor x) => x.rsqrt();

    /// <summary>√x.</summary>
    public static Tensor Sqrt(Tensor x) => x.sqrt();

    /// <summary>tanh x.</summary>
    public static Tensor Tanh(Tensor x) => x.tanh();

    /// <summary>1/(1+e⁻ˣ).</summary>
    public static Tensor Sigmoid(Tensor x) => x.sigmoid();

    /// <summary>x·sigmoid(x).</summary>
    public static Tensor Silu(Tensor x) => nn.functional.silu(x);

    /// <summary>
    /// x², as x·x (what libtorch computes for pow(x, 2) too, bit for bit). Not TorchSharp's <c>square()</c>: that is
    /// <c>pow(2)</c> with a temporary Scalar which TorchSharp 0.107 does not keep alive across the native call, so a
    /// garbage collection started by another thread can finalize it mid-call; with eight in-process devices squaring
    /// in chunks, libtorch then read a freed Scalar ("INTERNAL ASSERT FAILED at c10/core/Scalar.h", seen once in CI).
    /// Every square in the runtime goes through here.
    /// </summary>
    public static Tensor Square(Tensor x) => x.mul(x);

    /// <summary>Elementwise min(a, b).</summary>
    public static Tensor Minimum(Tensor a, Tensor b) => torch.minimum(a, b);

    /// <summary>1 where x ≥ 0, else 0 (Heaviside step), in x's dtype.</summary>
    public static Tensor Step(Tensor x)
    {
        using var ge = x.ge(HeldScalars.Constant(0));
        return ge.to_type(x.dtype);
    }

    /// <summary>A fused elementwise loop (<see cref="FusedLoop.Run(LoopKernel, int, Tensor[], Tensor[], int[], Tensor?[])"/>): a tensor of the operands' shape per entry of
    /// <paramref name="donors"/> (the operand whose buffer it is written into, or -1 for a new one), computed chunk by
    /// chunk by <paramref name="kernel"/> with <paramref name="temps"/> scratch slots.</summary>
    public static Tensor[] Fused(LoopKernel kernel, int temps, Tensor[] inputs, Tensor[] scalars, int[] donors) =>
        FusedLoop.Run(kernel, temps, inputs, scalars, donors);

    /// <summary>A fused loop whose results with a non-null entry in <paramref name="destinations"/> are written into
    /// that tensor (a slice of a concatenation's buffer, <see cref="ConcatInto"/>), which is also what it returns for them.</summary>
    public static Tensor[] Fused(LoopKernel kernel, int temps, Tensor[] inputs, Tensor[] scalars, int[] donors, Tensor?[] destinations) =>
        FusedLoop.Run(kernel, temps, inputs, scalars, donors, destinations);

    /// <summary>A fused loop with <paramref name="leads"/>: operands over the loop's first few dims, one value per run of
    /// the others (<see cref="FusedLoop.Run(LoopKernel, int, Tensor[], Tensor[], Tensor[], int[], Tensor?[])"/>).</summary>
    public static Tensor[] Fused(LoopKernel kernel, int temps, Tensor[] inputs, Tensor[] scalars, Tensor[] leads, int[] donors, Tensor?[]? destinations = null) =>
        FusedLoop.Run(kernel, temps, inputs, scalars, leads, donors, destinations);

    /// <summary><paramref name="length"/> entries of <paramref name="axis"/> from <paramref name="start"/>: a view.</summary>
    public static Tensor Narrow(Tensor x, long axis, long start, long length) => x.narrow(axis, start, length);

    /// <summary>
    /// <paramref name="xs"/> joined along <paramref name="axis"/> in <paramref name="join"/> (of the joined shape), which
    /// it returns: pieces that already are their slice of it (written there by their loops) are left as they are, the
    /// others are copied in.
    /// </summary>
    public static Tensor ConcatInto(Tensor join, Tensor[] xs, long axis)
    {
        long offset = 0;
        foreach (var x in xs)
        {
            var length = x.size((int)axis);
            using var slice = join.narrow(axis, offset, length);
            if (!IsSameView(slice, x)) slice.copy_(x);
            offset += length;
        }
        return join.alias();
    }

    /// <summary>Whether two tensors are the same elements of the same memory: same shape, strides and first element.</summary>
    private static bool IsSameView(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.device_type == DeviceType.CPU && b.device_type == DeviceType.CPU && Native.TensorMemory.SameShape(a, b)
        && SameStrides(a, b) && a.numel() > 0 && Native.TensorMemory.FirstElement(a) == Native.TensorMemory.FirstElement(b);

    private static bool SameStrides(Tensor a, Tensor b)
    {
        for (int d = 0, rank = (int)a.dim(); d < rank; d++) if (a.size(d) != 1 && a.stride(d) != b.stride(d)) return false;
        return true;
    }

    /// <summary>x under a new handle (a layout constraint has no runtime effect on one device).</summary>
    public static Tensor Identity(Tensor x) => x.alias();

    /// <summary>x repeated to <paramref name="shape"/> (x already aligned, size-1 dims where it lacks one); a view.</summary>
    public static Tensor Broadcast(Tensor x, long[] shape) => x.expand(shape);

    /// <summary>dy · silu'(x) = dy · s · (1 + x · (1 − s)), s = sigmoid(x).</summary>
    public static Tensor SiluGrad(Tensor dy, Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var s = x.sigmoid();
        var d = x.mul(s.neg().add_(HeldScalars.One, HeldScalars.One)).add_(HeldScalars.One, HeldScalars.One).mul_(s);
        return d.mul_(dy).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Layer norm's (no bias, over the last axis) input cotangent:
    /// rstd · (g − mean(g) − x̂ · mean(g · x̂)), g = dy · scale, x̂ = (x − mean) · rstd, rstd = 1/√(var + eps).
    /// One pass per row where it applies (<see cref="RowKernels.LayerNormDx"/>), else the composite form below.
    /// </summary>
    public static Tensor LayerNormDx(Tensor dy, Tensor x, Tensor scale, double eps) =>
        RowKernels.LayerNormDx(dy, x, scale, eps) ?? LayerNormDxComposite(dy, x, scale, eps);

    /// <summary><see cref="LayerNormDx"/> as TorchSharp ops: about ten passes over x-sized tensors.</summary>
    internal static Tensor LayerNormDxComposite(Tensor dy, Tensor x, Tensor scale, double eps)
    {
        using var scope = torch.NewDisposeScope();
        var mean = x.mean([-1], keepdim: true);
        var centered = x.sub(mean);
        using var held = new HeldScalars();
        var rstd = Square(centered).mean([-1], keepdim: true).add_(held[eps], HeldScalars.One).rsqrt_();
        var xhat = centered.mul_(rstd);
        var g = dy.mul(scale);
        var m1 = g.mean([-1], keepdim: true);
        var m2 = g.mul(xhat).mean([-1], keepdim: true);
        return g.sub_(m1).sub_(xhat.mul_(m2)).mul_(rstd).MoveToOuterDisposeScope();
    }

    /// <summary>Layer norm's scale cotangent: Σ dy · x̂ over every axis but the last.</summary>
    public static Tensor LayerNormDScale(Tensor dy, Tensor x, double eps)
    {
        if (RowKernels.LayerNormDScale(dy, x, eps) is { } fast) return fast;
        using var scope = torch.NewDisposeScope();
        var d = x.shape[^1];
        var xhat = nn.functional.layer_norm(x, [d], eps: eps);
        var prod = xhat.mul_(dy);
        var axes = Enumerable.Range(0, (int)x.dim() - 1).Select(i => (long)i).ToArray();
        return (axes.Length == 0 ? prod : prod.sum(axes)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <see cref="LayerNormDx"/> and <see cref="LayerNormDScale"/> of the same dy and x, as <c>[dx, dscale]</c>, in one read
    /// of both where the row kernel applies (<see cref="RowKernels.LayerNormGrads"/>: the same bits as the two calls);
    /// the two calls elsewhere. Code generation emits it for the two ops of one layer norm's VJP (a sibling fusion).
    /// </summary>
    public static Tensor[] LayerNormGrads(Tensor dy, Tensor x, Tensor scale, double eps) =>
        RowKernels.LayerNormGrads(dy, x, scale, eps) is var (dx, dscale)
            ? [dx, dscale]
            : [LayerNormDx(dy, x, scale, eps), LayerNormDScale(dy, x, eps)];

    /// <summary>
    /// Cross-entropy-with-z-loss's logits cotangent: dy · (softmax(x) · (1 + 2·zLoss·lse) − onehot(target)) along
    /// <paramref name="axis"/>; dy and targets have the logits' shape without that axis.
    /// </summary>
    public static Tensor CrossEntropyGrad(Tensor dy, Tensor logits, Tensor targets, long axis, double zLoss) =>
        RowKernels.CrossEntropyGrad(dy, logits, targets, axis, zLoss) ?? CrossEntropyGradComposite(dy, logits, targets, axis, zLoss);

    /// <summary><see cref="CrossEntropyGrad"/> in TorchSharp ops, for layouts the row kernel declines.</summary>
    internal static Tensor CrossEntropyGradComposite(Tensor dy, Tensor logits, Tensor targets, long axis, double zLoss)
    {
        using var scope = torch.NewDisposeScope();
        var lse = torch.logsumexp(logits, axis, keepdim: true);
        var p = logits.sub(lse).exp_();
        if (zLoss != 0)
            p = p.mul_(lse.mul(HeldScalars.Constant(2 * zLoss)).add_(HeldScalars.One, HeldScalars.One));
        var index = targets.to_type(ScalarType.Int64).unsqueeze(axis);
        using var minusOne = torch.full(index.shape, HeldScalars.Constant(-1.0), logits.dtype);
        p = p.scatter_add_(axis, index, minusOne);
        return p.mul_(dy.unsqueeze(axis)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Gather's transpose: zeros of <paramref name="shape"/> with each slice of dy added at its id along
    /// <paramref name="axis"/> (dy has shape[..axis] + ids.shape + shape[axis+1..]).
    /// </summary>
    public static Tensor ScatterAdd(Tensor dy, Tensor ids, long axis, long[] shape)
    {
        using var scope = torch.NewDisposeScope();
        var flatShape = shape.ToArray();
        flatShape[axis] = ids.numel();
        var src = dy.reshape(flatShape);
        var result = torch.zeros(shape, dy.dtype);
        result.index_add_(axis, ids.reshape(-1).to_type(ScalarType.Int64), src, HeldScalars.Constant(1.0));
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>Reorders axes: result axis i is input axis perm[i].</summary>
    public static Tensor Permute(Tensor x, long[] perm) => x.permute(perm);

    /// <summary>Reshapes (a view where possible).</summary>
    public static Tensor Reshape(Tensor x, long[] shape) => x.reshape(shape);

    /// <summary>Splits along <paramref name="axis"/> into pieces of the given sizes.</summary>
    public static Tensor[] Split(Tensor x, long axis, long[] sizes) => x.split(sizes, axis);

    /// <summary>Joins <paramref name="xs"/> along <paramref name="axis"/>.</summary>
    /// <remarks>
    /// Pieces that are all the same permutation of contiguous tensors (transposed weights, as the fusion pass's
    /// backward matmuls read them) are joined in their memory order and the result is that permutation of the join:
    /// torch.cat would write the result in the logical order, a strided gather of every element. Measured on palm-cpu's
    /// backward weight concatenation (w_upᵀ, w_gateᵀ: two [3072, 768] views of [768, 3072] tensors): 9 ms per layer
    /// through torch.cat, 1.5 ms in memory order. The matmul that reads the result takes a transposed operand as is.
    /// </remarks>
    public static Tensor Concat(Tensor[] xs, long axis)
    {
        if (SideBySide(xs, axis < 0 ? axis + xs[0].dim() : axis) is { } view) return view;
        if (MemoryOrder(xs) is { } order)
        {
            var at = Array.IndexOf(order, axis < 0 ? axis + xs[0].dim() : axis);
            var inverse = new long[order.Length];
            for (int i = 0; i < order.Length; i++) inverse[order[i]] = i;
            using var scope = NewDisposeScope();
            var permuted = new Tensor[xs.Length];
            for (int i = 0; i < xs.Length; i++) permuted[i] = xs[i].permute(order);
            var joined = torch.cat(permuted, at);
            return joined.permute(inverse).MoveToOuterDisposeScope();
        }
        return torch.cat(xs, axis);
    }

    /// <summary>
    /// The join of <paramref name="xs"/> along <paramref name="axis"/> as a view, when they already lie side by side in
    /// one buffer (null otherwise): same storage, same strides, the same sizes but along the axis, and each starting
    /// where the previous one ends along it. A parameter group's members (<see cref="GroupSideBySide"/>) are joined this
    /// way by the fused projections of the forward pass and, transposed, of the backward: no copy. Two tensors with the
    /// same storage base are views of one allocation (a base address belongs to one live storage), so the view of the
    /// union stays inside it.
    /// </summary>
    internal static Tensor? SideBySide(Tensor[] xs, long axis)
    {
        if (xs.Length < 2) return null;
        var first = xs[0];
        if (first.device_type != DeviceType.CPU || first.numel() == 0) return null;
        int rank = (int)first.dim();
        if (axis < 0 || axis >= rank || first.stride((int)axis) <= 0) return null;
        long element = first.ElementSize;
        nint Base(Tensor t) => Native.TensorMemory.FirstElement(t) - (nint)(t.storage_offset() * element);
        var storage = Base(first);
        var next = Native.TensorMemory.FirstElement(first);
        long total = 0;
        foreach (var x in xs)
        {
            if (x.dtype != first.dtype || x.device_type != DeviceType.CPU || x.dim() != rank || x.numel() == 0) return null;
            for (int d = 0; d < rank; d++)
                if (x.stride(d) != first.stride(d) || (d != axis && x.size(d) != first.size(d))) return null;
            if (Native.TensorMemory.FirstElement(x) != next || Base(x) != storage) return null;
            next += (nint)(x.size((int)axis) * x.stride((int)axis) * element);
            total += x.size((int)axis);
        }
        var shape = Native.TensorMemory.Shape(first);
        shape[axis] = total;
        return first.as_strided(shape, Native.TensorMemory.Strides(first), first.storage_offset());
    }

    /// <summary>
    /// Lays <paramref name="members"/> of <paramref name="tensors"/> side by side in one new buffer and puts views of it
    /// in their places (the old tensors are disposed; values are unchanged). Each member is
    /// [<paramref name="lead"/> shared dims, its own dims, <paramref name="trail"/> shared dims]; the buffer is
    /// [lead..., the members' own dims flattened and summed, trail...], and a join of the members along that dim
    /// (<see cref="Concat"/>) is then a view. Code generation groups the weights a fused projection joins this way,
    /// as XLA's buffer assignment places a concatenation's operands in slices of its output.
    /// </summary>
    public static void GroupSideBySide(Tensor[] tensors, int[] members, int lead, int trail)
    {
        var first = tensors[members[0]];
        int rank = (int)first.dim();
        var own = new long[members.Length];
        for (int i = 0; i < members.Length; i++)
        {
            var t = tensors[members[i]];
            int r = (int)t.dim();
            if (t.dtype != first.dtype || t.device_type != first.device_type || r < lead + trail)
                throw new ArgumentException($"parameter group: member {members[i]} is {t.dtype} [{string.Join(", ", t.shape)}], the first is {first.dtype} [{string.Join(", ", first.shape)}]");
            for (int d = 0; d < lead; d++)
                if (t.size(d) != first.size(d)) throw new ArgumentException($"parameter group: member {members[i]}'s leading dims differ from the first's");
            for (int d = 0; d < trail; d++)
                if (t.size(r - trail + d) != first.size(rank - trail + d)) throw new ArgumentException($"parameter group: member {members[i]}'s trailing dims differ from the first's");
            own[i] = 1;
            for (int d = lead; d < r - trail; d++) own[i] *= t.size(d);
        }
        var shape = new long[lead + 1 + trail];
        for (int d = 0; d < lead; d++) shape[d] = first.size(d);
        shape[lead] = own.Sum();
        for (int d = 0; d < trail; d++) shape[lead + 1 + d] = first.size(rank - trail + d);
        using var buffer = torch.empty(shape, first.dtype, first.device);
        long offset = 0;
        for (int i = 0; i < members.Length; i++)
        {
            var old = tensors[members[i]];
            using var slice = buffer.narrow(lead, offset, own[i]);
            var view = slice.view(Native.TensorMemory.Shape(old));
            view.copy_(old);
            tensors[members[i]] = view;
            old.Dispose();
            offset += own[i];
        }
    }

    /// <summary>
    /// The permutation that makes every one of <paramref name="xs"/> contiguous, when it is the same for all and not the
    /// identity (some piece is not contiguous as it stands); null otherwise.
    /// </summary>
    internal static long[]? MemoryOrder(Tensor[] xs)
    {
        bool contiguous = true;
        foreach (var x in xs) contiguous &= x.is_contiguous();
        if (contiguous) return null;
        int rank = (int)xs[0].dim();
        if (rank < 2) return null;
        long[]? order = null;
        foreach (var x in xs)
        {
            if (x.dim() != rank) return null;
            var shape = Native.TensorMemory.Shape(x);
            var strides = Native.TensorMemory.Strides(x);
            // Decreasing stride; size-1 dims have arbitrary strides, so they keep their logical place among equals.
            var keys = new long[rank];
            for (int d = 0; d < rank; d++) keys[d] = shape[d] == 1 ? long.MaxValue : strides[d];
            var o = Array.ConvertAll(StableOrder.Descending(keys), d => (long)d);
            if (order is null) order = o;
            else if (!o.AsSpan().SequenceEqual(order)) return null;
            if (!Native.TensorMemory.IsDenseInOrder(shape, strides, o)) return null;
        }
        for (int i = 0; i < rank; i++) if (order![i] != i) return order;
        return null;
    }

    /// <summary>An uninitialized tensor (a buffer every element of which is written before it is read).</summary>
    public static Tensor Empty(long[] shape, ScalarType dtype) => torch.empty(shape, dtype);

    /// <summary>Copies <paramref name="value"/> into slice <paramref name="index"/> of <paramref name="stacked"/>'s first axis.</summary>
    public static void SetLayer(Tensor stacked, long index, Tensor value)
    {
        using var slice = stacked.select(0, index);
        slice.copy_(value);
    }

    /// <summary>Index <paramref name="index"/> of <paramref name="axis"/>, dropping the axis (e.g. one layer of a stacked parameter).</summary>
    public static Tensor Select(Tensor x, long axis, long index) => x.select(axis, index);

    /// <summary>A stack of <paramref name="count"/> per-layer results, one tensor each (see <see cref="LayerStack"/>).</summary>
    public static LayerStack Layers(long count) => new(count);

    /// <summary>Keeps <paramref name="value"/> as layer <paramref name="index"/> without copying it: for a value the
    /// iteration made (its buffer is the iteration's own and nothing writes it afterwards).</summary>
    public static void SetLayer(LayerStack stack, long index, Tensor value) => stack.Set(index, value);

    /// <summary>Keeps a copy of <paramref name="value"/> as layer <paramref name="index"/>: for a value whose buffer the
    /// iteration does not own (a loop operand, a view of a parameter), which may change after the iteration.</summary>
    public static void SetLayerCopy(LayerStack stack, long index, Tensor value)
    {
        using var copy = value.clone();
        stack.Set(index, copy);
    }

    /// <summary>Layer <paramref name="index"/> of a stack that other readers read too (the stack keeps it).</summary>
    public static Tensor Select(LayerStack stack, long axis, long index) =>
        axis == 0 ? stack.Get(index) : throw new ArgumentOutOfRangeException(nameof(axis), "a layer stack is sliced along its layers only");

    /// <summary>Layer <paramref name="index"/> of a stack read by one loop only: the stack lets go of it, so it is freed with
    /// the reading iteration's scope.</summary>
    public static Tensor TakeLayer(LayerStack stack, long index) => stack.Take(index);

    /// <summary>Converts to <paramref name="dtype"/> (x itself, under a new handle, when it already has that type).</summary>
    public static Tensor Cast(Tensor x, ScalarType dtype) => x.dtype == dtype ? x.alias() : x.to_type(dtype);

    /// <summary>Einstein summation with a letter spec such as <c>"bsd,dhk->bshk"</c>.</summary>
    /// <remarks>Two operands run as one batched matmul in their memory order (<see cref="Contraction"/>);
    /// <c>PALMC_EINSUM=torch</c> sends every einsum to torch.einsum instead (to compare).</remarks>
    public static Tensor Einsum(string spec, params Tensor[] xs) =>
        xs.Length == 2 && !s_torchEinsum && Contraction.TryParse(spec, out var c) ? c.Run(xs[0], xs[1]) : torch.einsum(spec, xs);

    private static readonly bool s_torchEinsum = Environment.GetEnvironmentVariable("PALMC_EINSUM") == "torch";

    /// <summary>
    /// A two-operand einsum whose operand <paramref name="joined"/> is the concatenation of <paramref name="pieces"/>
    /// along its dim <paramref name="axis"/>, a dim the output keeps: one product per piece, each written into its slice
    /// of the result (<see cref="Contraction.RunOverPieces"/>), so the concatenation is never made. The other operand
    /// is <paramref name="other"/>.
    /// </summary>
    public static Tensor EinsumOverPieces(string spec, long joined, long axis, Tensor other, Tensor[] pieces)
    {
        if (!s_torchEinsum && Contraction.TryParse(spec, out var c) && c.RunOverPieces((int)joined, axis, other, pieces) is { } result) return result;
        using var whole = Concat(pieces, axis);
        return joined == 0 ? Einsum(spec, whole, other) : Einsum(spec, other, whole);
    }

    /// <summary>A two-operand einsum over causal attention's triangle (the IR's <c>causal_einsum</c>), computed in
    /// <paramref name="blocks"/> blocks (<see cref="CausalContraction"/>).</summary>
    public static Tensor CausalEinsum(string spec, string query, string key, long blocks, Tensor[] xs) =>
        CausalContraction.Run(spec, query[0], key[0], blocks, xs);

    /// <summary>causal_softmax(causal_einsum(...)) over the output's <paramref name="keyAxis"/>, each block normalized
    /// while in cache (<see cref="CausalContraction.RunSoftmax"/>).</summary>
    public static Tensor CausalEinsumSoftmax(string spec, string query, string key, long blocks, long queryAxis, long keyAxis, Tensor[] xs) =>
        CausalContraction.RunSoftmax(spec, query[0], key[0], blocks, queryAxis, keyAxis, xs);

    /// <summary>softmax_grad(causal_einsum(xs[0], xs[1]), xs[2]) over the output's <paramref name="keyAxis"/>
    /// (<see cref="CausalContraction.RunSoftmaxGrad"/>); <paramref name="spec"/> lists xs[2] with the output's subscripts.</summary>
    public static Tensor CausalEinsumSoftmaxGrad(string spec, string query, string key, long blocks, long keyAxis, Tensor[] xs) =>
        CausalContraction.RunSoftmaxGrad(spec, query[0], key[0], blocks, keyAxis, xs);

    /// <summary>Sum over <paramref name="axes"/> (dropped). No axes: x (new handle).</summary>
    public static Tensor Sum(Tensor x, long[] axes) => axes.Length == 0 ? x.alias() : x.sum(axes);

    /// <summary>Mean over <paramref name="axes"/> (dropped). No axes: x (new handle).</summary>
    public static Tensor Mean(Tensor x, long[] axes) => axes.Length == 0 ? x.alias() : x.mean(axes);

    /// <summary>
    /// Sum of x² over <paramref name="axes"/> (dropped), without a full-size squared temporary. When the reduced dims are
    /// x's innermost and x is dense fp32, <see cref="RowKernels.SumSquaresRows"/> reads x once (palm-cpu's 56 MB
    /// w_down: 1.2 ms); otherwise the reduced dims are squared and summed in chunks of about 2^18 elements (1 MiB in
    /// fp32, reused from the heap and hot in cache), whose sums are added up (3.6 ms; 121 ms for
    /// <c>x.square().sum()</c> when the temporary comes from fresh memory; error 1.4e-7 relative against an fp64 sum).
    /// (libtorch's CPU <c>linalg.vector_norm</c> needs no temporary either, but it is off by 1.2e-3 relative on the same
    /// tensor.) No axes: x².
    /// </summary>
    public static Tensor SumSquares(Tensor x, long[] axes) => axes.Length == 0 ? Square(x) : WideSumSquares(x, axes, mean: false);

    /// <summary>Mean of x² over <paramref name="axes"/> (dropped), as <see cref="SumSquares"/> divided by the count (in
    /// fp32 for bf16/f16, rounded once).</summary>
    public static Tensor MeanSquares(Tensor x, long[] axes) => axes.Length == 0 ? Square(x) : WideSumSquares(x, axes, mean: true);

    /// <summary>The sum of squares accumulated in fp32 for half types, divided by the reduced count for a mean, then
    /// cast back to x's dtype.</summary>
    private static Tensor WideSumSquares(Tensor x, long[] axes, bool mean)
    {
        // Loops rather than LINQ: the optimizer calls this for every parameter every step.
        int rank = (int)x.dim();
        var isReduced = new bool[rank];
        foreach (var a in axes) isReduced[a < 0 ? a + rank : a] = true;
        int nReduced = 0;
        foreach (var r in isReduced) if (r) nReduced++;
        var reduced = new long[nReduced];
        var kept = new long[rank - nReduced];
        long rows = 1, cols = 1;
        bool innermost = true;
        for (int d = 0, ri = 0, ki = 0; d < rank; d++)
            if (isReduced[d])
            {
                reduced[ri++] = d;
                cols *= x.size(d);
            }
            else
            {
                kept[ki++] = d;
                rows *= x.size(d);
                innermost &= ri == 0;      // no kept dim after a reduced one
            }
        var keptShape = new long[kept.Length];
        for (int i = 0; i < kept.Length; i++) keptShape[i] = x.size((int)kept[i]);
        if (cols > 0 && innermost && RowKernels.SumSquaresRows(x, rows, cols) is { } sums)
        {
            // The reduced dims are x's innermost: one read of x, each row's sum in fp64, rounded once to x's dtype.
            if (mean) for (int i = 0; i < sums.Length; i++) sums[i] /= cols;
            // Copied into a new tensor rather than wrapped by torch.tensor(array), which pins the array and registers a
            // deleter for it: managed garbage per call, for a few hundred bytes of data.
            using var wideResult = torch.empty(sums.Length, ScalarType.Float64);
            if (sums.Length > 0) System.Runtime.InteropServices.Marshal.Copy(sums, 0, Native.TensorMemory.FirstElement(wideResult), sums.Length);
            return wideResult.to_type(x.dtype).reshape(keptShape);
        }
        using var scope = torch.NewDisposeScope();
        if (rows == 0 || cols == 0) return (mean ? Square(x).mean(reduced) : Square(x).sum(reduced)).MoveToOuterDisposeScope();
        var matrix = x.permute([.. kept, .. reduced]).reshape(rows, cols);     // a view when the reduced dims are innermost
        // At most 64 chunks, so a small reduced dim under many kept entries does not become a long loop.
        var chunk = Math.Max((cols + 63) / 64, Math.Max(1, (1L << 18) / rows));
        var wide = x.dtype is ScalarType.BFloat16 or ScalarType.Float16 ? ScalarType.Float32 : x.dtype;
        var sum = torch.zeros(rows, wide, device: x.device);
        for (long at = 0; at < cols; at += chunk)
        {
            using var piece = matrix.narrow(1, at, Math.Min(chunk, cols - at));
            using var squared = Square(piece);
            using var part = squared.sum(1, type: wide);
            sum.add_(part, HeldScalars.One);
        }
        if (mean) sum.div_(HeldScalars.Constant(cols));
        return sum.to_type(x.dtype).reshape(keptShape).MoveToOuterDisposeScope();
    }

    /// <summary>Max over <paramref name="axes"/> (dropped). No axes: x (new handle).</summary>
    public static Tensor Max(Tensor x, long[] axes) => axes.Length == 0 ? x.alias() : x.amax(axes);

    /// <summary>Softmax along <paramref name="axis"/>.</summary>
    public static Tensor Softmax(Tensor x, long axis) => x.softmax(axis);

    /// <summary>softmax(causal_mask(x)) along <paramref name="keyAxis"/> in one pass per row (<see cref="RowKernels.CausalSoftmax"/>).</summary>
    public static Tensor CausalSoftmax(Tensor x, long queryAxis, long keyAxis) => RowKernels.CausalSoftmax(x, queryAxis, keyAxis);

    /// <summary>y · (dy − Σ dy·y) along <paramref name="axis"/>: softmax's VJP (<see cref="RowKernels.SoftmaxGrad"/>).</summary>
    public static Tensor SoftmaxGrad(Tensor dy, Tensor y, long axis) => RowKernels.SoftmaxGrad(dy, y, axis);

    /// <summary>log Σ exp along <paramref name="axis"/> (dropped).</summary>
    public static Tensor LogSumExp(Tensor x, long axis) => torch.logsumexp(x, axis);

    /// <summary>
    /// Layer norm over the last axis without bias (PaLM): (x - mean) / √(var + eps) · scale, with the biased variance.
    /// </summary>
    public static Tensor LayerNorm(Tensor x, Tensor scale, double eps)
    {
        var d = x.size(-1);
        if (scale.dim() == 1 && scale.size(0) == d && scale.dtype == x.dtype)
            return nn.functional.layer_norm(x, [d], weight: scale, eps: eps);
        using var normed = nn.functional.layer_norm(x, [d], eps: eps);
        return normed.mul(scale);
    }

    /// <summary>
    /// Rotary position embedding. Positions 0..S-1 run along <paramref name="seqAxis"/>; the feature axis (size K, even)
    /// is rotated in halves: x·[cos,cos] + concat(-x₂, x₁)·[sin,sin], with angle(s, i) = s·10000^(-2i/K).
    /// fp32 CPU tensors whose feature dim is contiguous take <see cref="RowKernels.Rope"/>'s one pass; others,
    /// <see cref="RopeByTables"/>.
    /// </summary>
    public static Tensor Rope(Tensor x, long seqAxis, long featureAxis, long inverse = 0)
    {
        long k = x.size((int)featureAxis);
        if (k % 2 != 0)
            throw new ArgumentException($"Rope needs an even feature size, got {k}.", nameof(x));
        return RowKernels.Rope(x, seqAxis, featureAxis, inverse != 0) ?? RopeByTables(x, seqAxis, featureAxis, inverse);
    }

    /// <summary>
    /// <see cref="Rope"/> in TorchSharp ops: x·cos, then each half gains the other half times ∓sin in place (two passes
    /// over x instead of the six of split, negate, concatenate, multiply, multiply, add); the tables depend only on S,
    /// K, the layout and the dtype and are made once per process.
    /// </summary>
    internal static Tensor RopeByTables(Tensor x, long seqAxis, long featureAxis, long inverse = 0)
    {
        long s = x.shape[seqAxis], k = x.shape[featureAxis];
        var (cos, sinLo, sinHi) = s_ropeTables.GetOrAdd((s, k, x.dim(), seqAxis, featureAxis, inverse != 0, x.dtype),
            key => new Lazy<(Tensor, Tensor, Tensor)>(() => RopeTables(key))).Value;
        var result = x.mul(cos);
        void AddOtherHalf(long into, long from, Tensor sin)
        {
            using var half = result.narrow(featureAxis, into, k / 2);
            using var other = x.narrow(featureAxis, from, k / 2);
            half.addcmul_(other, sin, HeldScalars.One);
        }
        AddOtherHalf(0, k / 2, sinLo);
        AddOtherHalf(k / 2, 0, sinHi);
        return result;
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<RopeKey, Lazy<(Tensor Cos, Tensor SinLo, Tensor SinHi)>> s_ropeTables = new();

    /// <summary>
    /// Rope's tables, shaped to broadcast against x: cos over all K features, and the sines that multiply the other half
    /// of x into each half, -sin into the first and +sin into the second (signs swapped for the inverse rotation). Angles
    /// in fp64, then cast, so the tables are exact to x's dtype. They live for the process, outside any dispose scope.
    /// </summary>
    private static (Tensor, Tensor, Tensor) RopeTables(RopeKey key)
    {
        var (s, k, rank, seqAxis, featureAxis, inverse, dtype) = key;
        using var scope = torch.NewDisposeScope();
        var invFreq = torch.arange(HeldScalars.Constant(0), HeldScalars.Constant(k), HeldScalars.Constant(2), ScalarType.Float64).mul(HeldScalars.Constant(-Math.Log(10000.0) / k)).exp();   // 10000^(-2i/K)
        var angles = torch.outer(torch.arange(HeldScalars.Constant(0), HeldScalars.Constant(s), HeldScalars.One, ScalarType.Float64), invFreq);     // [S, K/2]
        Tensor Shaped(Tensor t)
        {
            if (seqAxis > featureAxis) t = t.t();
            var view = new long[rank];
            Array.Fill(view, 1L);
            view[seqAxis] = s;
            view[featureAxis] = t.shape[seqAxis > featureAxis ? 0 : 1];
            return t.to_type(dtype).reshape(view).contiguous();
        }
        var sin = angles.sin();
        var cos = Shaped(torch.cat([angles.cos(), angles.cos()], 1));
        var sinLo = Shaped(inverse ? sin : sin.neg());
        var sinHi = Shaped(inverse ? sin.neg() : sin);
        foreach (var t in (Tensor[])[cos, sinLo, sinHi]) t.DetachFromDisposeScope();
        return (cos, sinLo, sinHi);
    }

    /// <summary>x with -∞ wherever the index along <paramref name="keyAxis"/> exceeds the one along <paramref name="queryAxis"/>.</summary>
    public static Tensor CausalMask(Tensor x, long queryAxis, long keyAxis, double fill = double.NegativeInfinity)
    {
        using var mask = CausalMaskOf(x, queryAxis, keyAxis);
        return x.masked_fill(mask, HeldScalars.Constant(fill));
    }

    /// <summary><see cref="CausalMask"/> written into <paramref name="x"/> (whose buffer is dead after it), which it returns.</summary>
    public static Tensor CausalMaskInPlace(Tensor x, long queryAxis, long keyAxis, double fill = double.NegativeInfinity)
    {
        using var mask = CausalMaskOf(x, queryAxis, keyAxis);
        return x.masked_fill_(mask, HeldScalars.Constant(fill));
    }

    /// <summary>True where key &gt; query, shaped to broadcast against <paramref name="x"/>.</summary>
    private static Tensor CausalMaskOf(Tensor x, long queryAxis, long keyAxis)
    {
        using var scope = torch.NewDisposeScope();
        long q = x.shape[queryAxis], k = x.shape[keyAxis];
        var mask = torch.ones(q, k, ScalarType.Bool).triu(1);                      // [Q, K]: true where key > query
        if (queryAxis > keyAxis)
            mask = mask.t();
        var view = new long[x.dim()];
        Array.Fill(view, 1L);
        view[queryAxis] = q;
        view[keyAxis] = k;
        return mask.reshape(view).MoveToOuterDisposeScope();
    }

    /// <summary>NumPy <c>take</c>: result shape is table.shape[:axis] + indices.shape + table.shape[axis+1:].</summary>
    public static Tensor Gather(Tensor table, Tensor indices, long axis)
    {
        using var scope = torch.NewDisposeScope();
        var shape = new List<long>(table.shape[..(int)axis]);
        shape.AddRange(indices.shape);
        shape.AddRange(table.shape[((int)axis + 1)..]);
        var picked = table.index_select(axis, indices.reshape(-1).to_type(ScalarType.Int64));
        return picked.reshape([.. shape]).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Per-position cross-entropy with z-loss: lse - logits[target] + zLoss·lse², where lse = logsumexp along
    /// <paramref name="axis"/>. The result has the shape of <paramref name="targets"/> (logits' shape without axis).
    /// </summary>
    public static Tensor CrossEntropy(Tensor logits, Tensor targets, long axis, double zLoss) =>
        RowKernels.CrossEntropy(logits, targets, axis, zLoss) ?? CrossEntropyComposite(logits, targets, axis, zLoss);

    /// <summary><see cref="CrossEntropy"/> in TorchSharp ops, for layouts the row kernel declines.</summary>
    internal static Tensor CrossEntropyComposite(Tensor logits, Tensor targets, long axis, double zLoss)
    {
        using var scope = torch.NewDisposeScope();
        var lse = torch.logsumexp(logits, axis);
        var picked = logits.gather(axis, targets.to_type(ScalarType.Int64).unsqueeze(axis)).squeeze(axis);
        var loss = lse.sub(picked);
        if (zLoss != 0)
            loss = loss.add(Square(lse).mul(HeldScalars.Constant(zLoss)), HeldScalars.One);
        return loss.MoveToOuterDisposeScope();
    }

    /// <summary>Concatenates the group's <paramref name="x"/> along <paramref name="dim"/> (see <see cref="ICollectives.AllGather"/>).</summary>
    public static Tensor AllGather(DeviceContext d, Tensor x, long dim, string[] axes) => d.Comm.AllGather(x, dim, axes);

    /// <summary>Sums over the group and keeps this device's chunk along <paramref name="dim"/> (see <see cref="ICollectives.ReduceScatter"/>).</summary>
    public static Tensor ReduceScatter(DeviceContext d, Tensor x, long dim, string[] axes) => d.Comm.ReduceScatter(x, dim, axes);

    /// <summary>Sums over the group (see <see cref="ICollectives.AllReduce"/>).</summary>
    public static Tensor AllReduce(DeviceContext d, Tensor x, string[] axes) => d.Comm.AllReduce(x, axes);

    /// <summary>Exchanges chunks within the group (see <see cref="ICollectives.AllToAll"/>).</summary>
    public static Tensor AllToAll(DeviceContext d, Tensor x, long splitDim, long concatDim, string[] axes) =>
        d.Comm.AllToAll(x, splitDim, concatDim, axes);

    /// <summary>
    /// This device's chunk of <paramref name="x"/> along <paramref name="dim"/>: chunk ShardIndex(axes) of ShardCount(axes)
    /// equal ones, as a new contiguous tensor (so the full tensor need not stay alive). Empty axes or one shard: x.alias().
    /// </summary>
    public static Tensor ShardSlice(DeviceContext d, Tensor x, long dim, string[] axes)
    {
        long count = d.ShardCount(axes);
        if (count == 1)
            return x.alias();
        if (dim < 0)
            dim += x.dim();
        long size = x.shape[dim];
        if (size % count != 0)
            throw new ArgumentException($"ShardSlice: dimension {dim} of size {size} does not divide into {count} shards over [{string.Join(", ", axes)}].", nameof(x));
        long chunk = size / count;
        using var view = x.narrow(dim, d.ShardIndex(axes) * chunk, chunk);
        return view.is_contiguous() ? view.clone() : view.contiguous();
    }

    /// <summary>
    /// This device's shard of a global tensor (a globally initialized parameter or input): dimension i is cut over
    /// <paramref name="dimAxes"/>[i] (empty = replicated). Always a new tensor, never sharing memory with
    /// <paramref name="global"/>, so devices given the same global tensor cannot write into one another's shards.
    /// </summary>
    public static Tensor ShardOf(DeviceContext d, Tensor global, string[][] dimAxes)
    {
        if (dimAxes.Length != global.dim())
            throw new ArgumentException($"ShardOf: {dimAxes.Length} dimension shardings for a tensor of rank {global.dim()}.", nameof(dimAxes));
        using var scope = torch.NewDisposeScope();
        var shard = global;
        bool copied = false;                       // ShardSlice copies whenever it cuts, and aliases otherwise
        for (int i = 0; i < dimAxes.Length; i++)
        {
            if (dimAxes[i].Length > 0 && d.ShardCount(dimAxes[i]) > 1)
            {
                shard = ShardSlice(d, shard, i, dimAxes[i]);
                copied = true;
            }
        }
        return (copied ? shard : global.clone()).MoveToOuterDisposeScope();
    }

    // Fails early with the real cause when the output copy of libLibTorchSharp.so was not patched.
    private static void ThrowIfUnpatched()
    {
        if (!OperatingSystem.IsLinux())
            return;
        foreach (var dir in new[] { AppContext.BaseDirectory, Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native") })
        {
            var lib = Path.Combine(dir, LibTorchSharpPatch.LibraryName);
            if (File.Exists(lib) && LibTorchSharpPatch.NeedsPatch(lib))
                throw new InvalidOperationException(LoadFailureMessage($"{lib} is unpatched."));
        }
    }

    private static string LoadFailureMessage(string cause) =>
        "TorchSharp's native libraries failed to load. On systems whose libstdc++ predates GCC 13 (e.g. Debian 12, "
        + $"which ends at GLIBCXX_3.4.30), {LibTorchSharpPatch.LibraryName} cannot load because it requires "
        + $"{LibTorchSharpPatch.Version}, though it never uses it. Building through this repository's "
        + "Directory.Build.targets (build/TorchSharpNative.targets) marks that requirement weak in the output copy; "
        + "for files copied elsewhere call PaLM.Runtime.Native.LibTorchSharpPatch.PatchDirectory(folder) before "
        + $"the first torch call. Cause: {cause}";
}
