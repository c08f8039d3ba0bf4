"""Canny, as ComfyUI's node (kornia's algorithm): thin edges on the outline of a shape,
nothing on flat areas, weak edges kept only where they touch strong ones."""
import torch

from farm.nodes.canny import canny


def square(value=1.0, size=32):
    image = torch.zeros(1, 3, size, size)
    image[:, :, 8:24, 8:24] = value
    return image


def test_edges_trace_the_outline_and_nothing_else():
    edges = canny(square(), 0.4, 0.8)[0, 0]
    assert set(edges.unique().tolist()) <= {0.0, 1.0}
    assert edges[12:20, 12:20].sum() == 0 and edges[:4].sum() == 0  # flat inside and outside
    found = edges.nonzero()
    assert found.min() >= 6 and found.max() <= 25  # on the square's border
    # thin: across the middle of the square, at most one pixel per side (a tie between the
    # two pixels of a step is suppressed, as in kornia, so a side may show none there)
    assert 1 <= edges[15, :].sum() <= 2 and edges[:, 15].sum() <= 2
    assert canny(torch.zeros(1, 3, 32, 32), 0.4, 0.8).sum() == 0


def test_thresholds_and_hysteresis():
    # a faint square: its edges are weak only (between the thresholds), so with no strong
    # pixel to connect to, hysteresis drops them all
    faint = square(0.3)
    assert canny(faint, 0.2, 0.95).sum() == 0
    assert canny(faint, 0.2, 0.3).sum() > 0
    # the same faint square beside a strong one: weak edges that touch no strong one still go
    both = square(0.3, 64)
    both[:, :, 40:56, 40:56] = 1.0
    edges = canny(both, 0.2, 0.95)[0, 0]
    assert edges[:30, :30].sum() == 0 and edges[36:60, 36:60].sum() > 0
