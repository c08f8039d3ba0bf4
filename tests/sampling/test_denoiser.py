import math

import pytest
import torch

from farm.sampling.denoiser import CFGDenoiser, CondBatch, Conditioning
from farm.sampling.model_sampling import DiscreteSchedule

SD = DiscreteSchedule.sd()


class ToyUNet:
    """eps depends on every input so that a wrong row, timestep or conditioning shows:
    eps = 0.3 x_in + mean(embeds) + t / 1000 + mean(pooled) + mean(time_ids)."""

    def __init__(self):
        self.calls: list[tuple[torch.Tensor, torch.Tensor, CondBatch]] = []

    def __call__(self, x_in, timestep, cond: CondBatch):
        self.calls.append((x_in, timestep, cond))
        extra = cond.embeds.mean(dim=(1, 2))
        if cond.pooled is not None:
            extra = extra + cond.pooled.mean(dim=1)
        if cond.time_ids is not None:
            extra = extra + cond.time_ids.float().mean(dim=1)
        return 0.3 * x_in + (extra + timestep / 1000).reshape(-1, 1, 1, 1)


def cond(value, rows=1, tokens=77, width=8, pooled=None):
    embeds = torch.full((rows, tokens, width), float(value))
    return Conditioning(embeds=embeds, pooled=None if pooled is None else torch.full((rows, 4), float(pooled)))


def by_hand(x, sigma, t, c, u, cfg):
    """k-diffusion's eps wrapper and CFG written out for the toy UNet with scalar conditioning."""
    x_in = x / math.sqrt(sigma**2 + 1)
    eps_c, eps_u = 0.3 * x_in + c + t / 1000, 0.3 * x_in + u + t / 1000
    d_c, d_u = x - eps_c * sigma, x - eps_u * sigma
    return d_u + (d_c - d_u) * cfg


def test_guidance_matches_the_formula_and_uses_one_batched_call():
    unet = ToyUNet()
    den = CFGDenoiser(unet, SD, cond(0.2), cond(-0.1), cfg=7.5)
    x = torch.randn(2, 4, 3, 3)
    sigma = SD.sigmas[[600, 600]] * 1.0001  # just off the table: the timestep rounds to 600
    out = den(x, sigma)
    torch.testing.assert_close(out, by_hand(x, float(sigma[0]), 600, 0.2, -0.1, 7.5), rtol=1e-5, atol=1e-5)
    assert len(unet.calls) == 1
    x_in, timestep, batch = unet.calls[0]
    assert x_in.shape[0] == 4 and timestep.tolist() == [600.0] * 4 and timestep.dtype == torch.float32
    assert batch.embeds[:2].eq(0.2).all() and batch.embeds[2:].eq(-0.1).all()  # positive rows first


def test_cfg_one_skips_the_negative_side():
    unet = ToyUNet()
    den = CFGDenoiser(unet, SD, cond(0.2), cond(-0.1), cfg=1.0)
    x = torch.randn(3, 4, 2, 2)
    sigma = SD.sigmas[[999] * 3]
    out = den(x, sigma)
    assert len(unet.calls) == 1 and unet.calls[0][0].shape[0] == 3
    torch.testing.assert_close(out, by_hand(x, float(sigma[0]), 999, 0.2, 0.0, 1.0), rtol=1e-5, atol=1e-5)
    assert CFGDenoiser(ToyUNet(), SD, cond(0.2), None, cfg=1.0)(x, sigma).shape == x.shape


def test_per_row_cfg_and_prompts_equal_rows_run_alone():
    x = torch.randn(3, 4, 2, 2)
    sigma = SD.sigmas[[300] * 3]
    cfgs = [1.0, 7.0, 3.5]
    pos = Conditioning(embeds=torch.stack([torch.full((77, 8), v) for v in (0.1, 0.2, 0.3)]))
    batched = CFGDenoiser(ToyUNet(), SD, pos, cond(-0.5), cfg=torch.tensor(cfgs))(x, sigma)
    for r in range(3):
        alone = CFGDenoiser(ToyUNet(), SD, Conditioning(embeds=pos.embeds[r:r + 1]), cond(-0.5), cfg=cfgs[r])
        torch.testing.assert_close(batched[r:r + 1], alone(x[r:r + 1], sigma[r:r + 1]), rtol=1e-6, atol=1e-6)


def test_token_lengths_are_repeated_to_their_lcm():
    unet = ToyUNet()
    long_prompt = Conditioning(embeds=torch.arange(154 * 2, dtype=torch.float32).reshape(1, 154, 2))
    short = Conditioning(embeds=torch.arange(77 * 2, dtype=torch.float32).reshape(1, 77, 2) * -1)
    CFGDenoiser(unet, SD, long_prompt, short, cfg=5.0)(torch.randn(2, 4, 2, 2), SD.sigmas[[10, 10]])
    embeds = unet.calls[0][2].embeds
    assert embeds.shape == (4, 154, 2)
    assert torch.equal(embeds[0], long_prompt.embeds[0])
    assert torch.equal(embeds[2], torch.cat([short.embeds[0], short.embeds[0]]))


def test_pooled_and_time_ids_travel_with_their_rows():
    unet = ToyUNet()
    pos = Conditioning(embeds=torch.zeros(1, 77, 8), pooled=torch.ones(1, 4),
                       time_ids=torch.tensor([[1024, 1024, 0, 0, 1024, 1024]]))
    neg = Conditioning(embeds=torch.zeros(1, 77, 8), pooled=torch.zeros(1, 4),
                       time_ids=torch.tensor([[512, 512, 0, 0, 512, 512]]))
    CFGDenoiser(unet, SD, pos, neg, cfg=2.0)(torch.randn(2, 4, 2, 2), SD.sigmas[[10, 10]])
    batch = unet.calls[0][2]
    assert batch.pooled.tolist() == [[1.0] * 4] * 2 + [[0.0] * 4] * 2
    assert batch.time_ids[:, 0].tolist() == [1024, 1024, 512, 512]


def test_bad_conditioning_is_refused_with_a_fix():
    x, sigma = torch.randn(2, 4, 2, 2), SD.sigmas[[10, 10]]
    with pytest.raises(ValueError, match="1 row"):
        CFGDenoiser(ToyUNet(), SD, cond(0.1, rows=3), cond(0.0), cfg=2.0)(x, sigma)
    with pytest.raises(ValueError, match="pooled"):
        CFGDenoiser(ToyUNet(), SD, cond(0.1, pooled=1.0), cond(0.0), cfg=2.0)(x, sigma)
    with pytest.raises(ValueError, match="same CLIP"):
        CFGDenoiser(ToyUNet(), SD, cond(0.1, width=8), cond(0.0, width=16), cfg=2.0)(x, sigma)
    with pytest.raises(ValueError, match="negative"):
        CFGDenoiser(ToyUNet(), SD, cond(0.1), None, cfg=2.0)
