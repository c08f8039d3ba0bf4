"""ControlNet hints through the denoiser: each side's hints land on its own rows of the
CFG batch, jobs' hints on their own blocks, the step's sigma rides along, and the legacy
node's hints are copied to a negative that has none, as ComfyUI does."""
import torch

from farm.sampling.control import ControlHint, fill_uncond, rebase
from farm.sampling.denoiser import CFGDenoiser, Conditioning
from farm.sampling.model_sampling import DiscreteSchedule


def hint(net="net", legacy=False, rows=None, start=0.0, end=1.0):
    return ControlHint(net, torch.zeros(1, 3, 8, 8), 1.0, start, end, legacy, rows)


def cond(*hints):
    return Conditioning(torch.zeros(1, 77, 4), control=tuple(hints))


def test_the_denoiser_puts_each_sides_hints_on_its_rows_and_passes_sigma():
    seen = []

    def eps(x, t, batch):
        seen.append(batch)
        return torch.zeros_like(x)

    positive, negative = cond(hint("a")), cond(hint("b", rows=(1,)))
    CFGDenoiser(eps, DiscreteSchedule.sd(), positive, negative, 5.0)(torch.zeros(2, 4, 1, 1), torch.full((2,), 3.0))
    (batch,) = seen
    assert [(h.net, h.rows) for h in batch.control] == [("a", (0, 1)), ("b", (3,))]  # negative rows start at 2
    assert batch.sigma.tolist() == [3.0] * 4
    seen.clear()
    CFGDenoiser(eps, DiscreteSchedule.sd(), cond(), cond(), 5.0)(torch.zeros(2, 4, 1, 1), torch.full((2,), 3.0))
    assert seen[0].control == () and seen[0].sigma is None  # no hints: nothing extra to carry


def test_rebase_moves_hints_to_their_jobs_block():
    assert [h.rows for h in rebase([hint(), hint(rows=(1,))], 4, 2)] == [(4, 5), (5,)]
    first = hint()
    moved = rebase([first], 2, 2)[0]
    assert moved.prepared is first.prepared  # the resized image is shared, not recomputed


def test_the_legacy_nodes_hints_reach_a_negative_without_its_own():
    legacy, advanced = hint("old", legacy=True), hint("new")
    assert fill_uncond(cond(legacy), cond()).control == (legacy,)
    assert fill_uncond(cond(advanced, legacy), cond()).control == (advanced, legacy)  # the whole chain
    assert fill_uncond(cond(legacy, advanced), cond()).control == ()  # the last one decides, as in ComfyUI
    own = hint("own")
    assert fill_uncond(cond(legacy), cond(own)).control == (own,)


def test_the_window_in_sigmas_is_comfyuis_percent_to_sigma():
    schedule = DiscreteSchedule.sd()
    assert hint(start=0.0, end=1.0).sigma_range(schedule) == (999999999.9, 0.0)
    high, low = hint(start=0.25, end=0.75).sigma_range(schedule)
    assert high == schedule.percent_to_sigma(0.25) and low == schedule.percent_to_sigma(0.75)
    assert abs(high - float(schedule.sigma(torch.tensor(0.75 * 999)))) < 1e-6
