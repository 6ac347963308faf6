using PaLM.Runtime;
using static TorchSharp.torch;

namespace PaLM.Runtime.Tests;

/// <summary>
/// Parameter groups (<see cref="Rt.GroupSideBySide"/>) and the joins that are views of them (<see cref="Rt.Concat"/>
/// through <see cref="Rt.SideBySide"/>): values kept, joins equal to torch.cat whether they are views or copies, and
/// a view only where the pieces really are one buffer's consecutive slices.
/// </summary>
public sealed class SideBySideTests
{
    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    private static bool Shares(Tensor view, Tensor member)
    {
        // Writing through the member shows in the view: the same memory.
        var before = view.clone();
        member.add_(1);
        bool moved = !view.eq(before).all().item<bool>();
        member.sub_(1);
        return moved;
    }

    [Fact]
    public void TheJoinsOfAGroupsMembersAreViewsOfItsBuffer()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator(11);
        // Stacked weights as palm's forward projection joins them: [layers, d_model, own...], and one bystander.
        var ps = new[] { randn([3, 4, 2, 5], generator: g), randn([3, 4, 7], generator: g), randn([9], generator: g), randn([3, 4, 16], generator: g) };
        var before = ps.Select(p => p.clone()).ToArray();
        Rt.GroupSideBySide(ps, [0, 1, 3], lead: 2, trail: 0);
        for (int i = 0; i < ps.Length; i++) Assert.True(Same(ps[i], before[i]), $"member {i} changed");
        for (long layer = 0; layer < 3; layer++)
        {
            Tensor[] pieces = [ps[0][layer].reshape(4, 10), ps[1][layer], ps[3][layer]];
            var joined = Rt.Concat(pieces, 1);
            Assert.True(Same(joined, cat(pieces, 1)));
            Assert.NotNull(Rt.SideBySide(pieces, 1));
            Assert.True(Shares(joined, ps[1]));
            // The backward's join of the transposed weights, in the same order: a view too.
            Tensor[] transposed = [.. pieces.Select(p => p.t())];
            var joinedT = Rt.Concat(transposed, 0);
            Assert.True(Same(joinedT, cat(transposed, 0)));
            Assert.True(Shares(joinedT, ps[0]));
            // In another order the pieces are not consecutive: copied, and still right.
            Tensor[] reversed = [pieces[2], pieces[1], pieces[0]];
            Assert.Null(Rt.SideBySide(reversed, 1));
            var copied = Rt.Concat(reversed, 1);
            Assert.True(Same(copied, cat(reversed, 1)));
            Assert.False(Shares(copied, ps[1]));
        }
        // Shared trailing dims (w_o and w_down: [layers, own..., d_model]).
        var qs = new[] { randn([2, 3, 4, 6], generator: g), randn([2, 5, 6], generator: g) };
        var qBefore = qs.Select(q => q.clone()).ToArray();
        Rt.GroupSideBySide(qs, [0, 1], lead: 1, trail: 1);
        Assert.True(Same(qs[0], qBefore[0]) && Same(qs[1], qBefore[1]));
        Tensor[] rows = [qs[0][1].reshape(12, 6), qs[1][1]];
        Assert.NotNull(Rt.SideBySide(rows, 0));
        Assert.True(Same(Rt.Concat(rows, 0), cat(rows, 0)));
    }

    [Fact]
    public void PiecesThatAreNotConsecutiveSlicesOfOneBufferAreCopied()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var g = new Generator(12);
        var buffer = randn([4, 10], generator: g);
        // Consecutive slices: a view of the whole.
        var whole = Rt.SideBySide([buffer.narrow(1, 0, 3), buffer.narrow(1, 3, 7)], 1);
        Assert.NotNull(whole);
        Assert.True(Same(whole!, buffer));
        // A gap between them, a different stride, separate buffers, a single piece: no view.
        Assert.Null(Rt.SideBySide([buffer.narrow(1, 0, 3), buffer.narrow(1, 4, 6)], 1));
        Assert.Null(Rt.SideBySide([buffer.narrow(1, 0, 4).t(), buffer.narrow(1, 4, 6)], 1));
        Assert.Null(Rt.SideBySide([randn([4, 3], generator: g), randn([4, 7], generator: g)], 1));
        Assert.Null(Rt.SideBySide([buffer], 1));
        // Two tensors carved from one flat buffer may be adjacent in memory without being slices of one join.
        var flat = randn([24], generator: g);
        var a = flat.narrow(0, 0, 12).view(3, 4);
        var b = flat.narrow(0, 12, 12).view(3, 4);
        Assert.Null(Rt.SideBySide([a, b], 1));
        Assert.NotNull(Rt.SideBySide([a, b], 0));
        Assert.True(Same(Rt.Concat([a, b], 1), cat([a, b], 1)));
        Assert.True(Same(Rt.Concat([a, b], 0), flat.view(6, 4)));
    }

    [Fact]
    public void AGroupsMembersShareTheirLeadingAndTrailingDims()
    {
        Rt.Initialize();
        using var scope = NewDisposeScope();
        var e = Assert.Throws<ArgumentException>(() => Rt.GroupSideBySide([zeros(3, 4, 5), zeros(2, 4, 5)], [0, 1], lead: 1, trail: 0));
        Assert.Contains("leading dims", e.Message);
        e = Assert.Throws<ArgumentException>(() => Rt.GroupSideBySide([zeros(3, 4, 5), zeros(3, 2, 6)], [0, 1], lead: 1, trail: 1));
        Assert.Contains("trailing dims", e.Message);
    }
}
