"""The regional denoiser against predictions written out by hand for a pointwise toy UNet
(its prediction on a crop is the crop of its prediction, so an area's expected effect can
be computed on the full latent): weighted means of entries, the feathered area weights,
the negative's twin entries, timestep ranges, and that the plain case equals CFGDenoiser."""
import dataclasses
import math

import pytest
import torch

from farm.errors import InvalidInputError
from farm.sampling.denoiser import CFGDenoiser, CondBatch, Conditioning
from farm.sampling.model_sampling import DiscreteSchedule
from farm.sampling.regions import (
    Area,
    Region,
    RegionalCFGDenoiser,
    add_opposite_areas,
    resolve_regions,
)

SD = DiscreteSchedule.sd()
H = W = 16


def toy_eps(x_in, timestep, cond: CondBatch):
    scale = cond.embeds.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
    return torch.tanh(x_in * scale) + (timestep / 1000).reshape(-1, 1, 1, 1)


def cond(value, **options):
    return Conditioning(torch.full((1, 77, 8), float(value)), **options)


def regions(c):
    return resolve_regions(c, H, W, SD, lambda entry: None)


def denoiser(positive, negative, cfg=5.0, rows=1):
    pos, neg = [regions(p) for p in positive], [regions(n) for n in negative]
    for p, n in zip(pos, neg):
        add_opposite_areas(p, n)
        add_opposite_areas(n, p)
    cfg = torch.tensor([cfg] * len(positive) if isinstance(cfg, float) else cfg).repeat_interleave(rows)
    return RegionalCFGDenoiser(toy_eps, SD, pos, neg, cfg, rows)


def full_denoised(x, sigma, value):
    """x0 of one entry over the whole latent, by hand."""
    t = float(SD.timestep(torch.tensor([sigma])))
    x_in = x / math.sqrt(sigma**2 + 1)
    return x - (torch.tanh(x_in * value) + t / 1000) * sigma


@pytest.fixture
def x():
    return torch.randn(1, 4, H, W, generator=torch.Generator().manual_seed(0)) * 3


SIGMA = 2.5


def test_plain_entries_give_exactly_what_cfg_denoiser_gives(x):
    sigma = torch.tensor([SIGMA])
    plain = CFGDenoiser(toy_eps, SD, cond(0.7), cond(-0.2), 5.0)(x, sigma)
    assert torch.equal(denoiser([cond(0.7)], [cond(-0.2)])(x, sigma), plain)


def test_combining_a_prompt_with_itself_is_the_prompt(x):
    sigma = torch.tensor([SIGMA])
    a = cond(0.7)
    combined = Conditioning.from_entries([a, a])
    assert len(combined.entries()) == 2
    torch.testing.assert_close(denoiser([combined], [cond(-0.2)])(x, sigma), denoiser([a], [cond(-0.2)])(x, sigma),
                               rtol=0, atol=1e-6)


def test_two_entries_are_their_strength_weighted_mean(x):
    weighted = Conditioning.from_entries([cond(0.7), dataclasses.replace(cond(1.5), strength=3.0)])
    got = denoiser([weighted], [cond(0.0)], cfg=1.0)(x, torch.tensor([SIGMA]))
    expected = (full_denoised(x, SIGMA, 0.7) + 3.0 * full_denoised(x, SIGMA, 1.5)) / 4.0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_an_area_entry_acts_only_in_its_area_with_comfyuis_feathered_weights(x):
    # 64x64 px at (0, 32): latent cells rows 4..11, columns 0..7 of 16x16
    boxed = dataclasses.replace(cond(1.5), area=Area(8, 8, 4, 0), strength=2.0)
    positive = Conditioning.from_entries([cond(0.7), boxed])
    got = denoiser([positive], [cond(-0.2)])(x, torch.tensor([SIGMA]))
    plain = denoiser([cond(0.7)], [cond(-0.2)])(x, torch.tensor([SIGMA]))

    # the fade is min(8, size // 4) = 2 cells, at edges inside the image only (not at x = 0)
    rows = torch.tensor([0.5, 1, 1, 1, 1, 1, 1, 0.5])
    cols = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0.5])
    mult = torch.zeros(H, W)
    mult[4:12, 0:8] = 2.0 * rows[:, None] * cols[None, :]
    d_a, d_b, d_n = (full_denoised(x, SIGMA, v) for v in (0.7, 1.5, -0.2))
    cond_pred = (d_a + d_b * mult) / (1 + mult)
    uncond_pred = (d_n + d_n * mult) / (1 + mult)  # the negative's twin over the same area
    expected = uncond_pred + (cond_pred - uncond_pred) * 5.0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    outside = mult == 0
    assert torch.equal(got[..., outside], plain[..., outside])
    assert (got[..., ~outside] - plain[..., ~outside]).abs().min() > 0


def test_the_negative_gets_a_twin_per_area_and_none_when_it_has_that_area():
    boxed = regions(dataclasses.replace(cond(1.0), area=Area(4, 4, 2, 2), strength=0.5))
    negative = regions(cond(-1.0))
    add_opposite_areas(boxed, negative)
    twin = negative[1]
    assert (twin.area, twin.strength, float(twin.embeds.mean())) == ((4, 4, 2, 2), 0.5, -1.0)
    add_opposite_areas(boxed, negative)
    assert len(negative) == 2  # the twin itself now has that very area: no second one
    same = regions(dataclasses.replace(cond(-1.0), area=Area(4, 4, 2, 2)))
    add_opposite_areas(boxed, same)
    assert len(same) == 1
    inner = regions(dataclasses.replace(cond(1.0), area=Area(2, 2, 3, 3)))
    covering = [*regions(cond(-1.0)), *same]
    add_opposite_areas(inner, covering)
    assert float(covering[-1].embeds.mean()) == -1.0 and covering[-1].area == (2, 2, 3, 3)
    assert covering[-1].embeds is same[0].embeds  # the smallest covering area wins over the whole latent


def test_percentage_areas_round_as_comfyui_and_areas_are_cut_to_the_latent():
    assert Area(0.5, 0.25, 0.5, 0.125, percent=True).cells(H, W) == (8, 4, 8, 2)
    assert Area(0.01, 0.01, 0, 0, percent=True).cells(H, W) == (1, 1, 0, 0)  # at least one cell
    assert Area(64, 64, 8, 12).cells(H, W) == (8, 4, 8, 12)
    with pytest.raises(InvalidInputError, match="outside"):
        Area(8, 8, 16, 0).cells(H, W)


def test_a_range_of_the_whole_schedule_is_no_range_and_an_empty_one_is_no_entry(x):
    sigma = torch.tensor([SIGMA])
    plain = denoiser([cond(0.7)], [cond(-0.2)])(x, sigma)
    whole = dataclasses.replace(cond(0.7), start_percent=0.0, end_percent=1.0)
    assert torch.equal(denoiser([whole], [cond(-0.2)])(x, sigma), plain)
    never = dataclasses.replace(cond(1.5), start_percent=1.0, end_percent=1.0)
    assert torch.equal(denoiser([Conditioning.from_entries([cond(0.7), never])], [cond(-0.2)])(x, sigma), plain)


def test_a_range_switches_its_entry_on_by_sigma(x):
    # the second half of the schedule: on below sigma(50%), off above it
    half = SD.percent_to_sigma(0.5)
    late = dataclasses.replace(cond(1.5), start_percent=0.5, end_percent=1.0)
    both = Conditioning.from_entries([cond(0.7), late])
    d = denoiser([both], [cond(0.0)], cfg=1.0)
    high, low = half * 1.5, half / 1.5
    torch.testing.assert_close(d(x, torch.tensor([high])), full_denoised(x, high, 0.7), rtol=0, atol=1e-5)
    expected = (full_denoised(x, low, 0.7) + full_denoised(x, low, 1.5)) / 2
    torch.testing.assert_close(d(x, torch.tensor([low])), expected, rtol=0, atol=1e-5)


def test_a_side_with_no_active_entry_predicts_zero_as_comfyui(x):
    never = dataclasses.replace(cond(1.5), start_percent=1.0, end_percent=1.0)
    assert torch.equal(denoiser([never], [cond(0.0)], cfg=1.0)(x, torch.tensor([SIGMA])), torch.zeros_like(x))


def test_jobs_with_their_own_regions_in_one_batch_give_what_each_gives_alone():
    xs = torch.randn(3, 4, H, W, generator=torch.Generator().manual_seed(1))
    boxed = Conditioning.from_entries([cond(0.7), dataclasses.replace(cond(1.5), area=Area(8, 8, 0, 8))])
    ranged = Conditioning.from_entries([cond(0.3), dataclasses.replace(cond(-1.0), start_percent=0.0,
                                                                       end_percent=0.9)])
    jobs = [(boxed, cond(-0.2), 5.0), (cond(0.4), cond(0.1), 1.0), (ranged, cond(-0.5), 3.0)]
    sigma = torch.full((3,), SIGMA)
    together = denoiser([j[0] for j in jobs], [j[1] for j in jobs], cfg=[j[2] for j in jobs])(xs, sigma)
    for i, (p, n, c) in enumerate(jobs):
        alone = denoiser([p], [n], cfg=c)(xs[i:i + 1], sigma[i:i + 1])
        torch.testing.assert_close(together[i:i + 1], alone, rtol=0, atol=1e-6)


def test_region_mult_is_cached_per_latent_size():
    r = Region(torch.zeros(1, 77, 8), None, None, (8, 8, 4, 4), 1.0)
    assert r.mult(16, 16, "cpu") is r.mult(16, 16, "cpu")
