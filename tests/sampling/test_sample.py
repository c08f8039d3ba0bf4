import math

import pytest
import torch

from farm.sampling.denoiser import CFGDenoiser, CondBatch, Conditioning
from farm.sampling.model_sampling import DiscreteSchedule
from farm.sampling.noise import initial_noise
from farm.sampling.sample import sample, slice_sigmas
from farm.sampling.samplers import SAMPLERS
from farm.sampling.schedules import compute_sigmas

SD = DiscreteSchedule.sd()
SIGMAS = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.5, 0.0])


def toy_eps(x_in, timestep, cond: CondBatch):
    return 0.5 * x_in + cond.embeds.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + timestep.reshape(-1, 1, 1, 1) / 2000


def denoiser(cfg=5.0, rows=1):
    pos = Conditioning(embeds=torch.linspace(0.1, 0.4, rows).reshape(rows, 1, 1).expand(rows, 77, 8).contiguous())
    return CFGDenoiser(toy_eps, SD, pos, Conditioning(embeds=torch.zeros(1, 77, 8)), cfg=cfg)


def test_slice_sigmas_follows_ksampler_advanced():
    assert torch.equal(slice_sigmas(SIGMAS), SIGMAS)
    assert slice_sigmas(SIGMAS, end_step=3).tolist() == [10.0, 6.0, 3.0, 1.0]
    assert slice_sigmas(SIGMAS, end_step=3, force_full_denoise=True).tolist() == [10.0, 6.0, 3.0, 0.0]
    assert SIGMAS[3] == 1.0  # the caller's tensor is not modified
    assert slice_sigmas(SIGMAS, end_step=10000, force_full_denoise=True).tolist() == SIGMAS.tolist()
    assert slice_sigmas(SIGMAS, start_step=2).tolist() == [3.0, 1.0, 0.5, 0.0]
    assert slice_sigmas(SIGMAS, start_step=1, end_step=3).tolist() == [6.0, 3.0, 1.0]
    assert slice_sigmas(SIGMAS, start_step=4).tolist() == [0.5, 0.0]
    assert slice_sigmas(SIGMAS, start_step=5).numel() == 0
    assert slice_sigmas(SIGMAS, start_step=3, end_step=3).numel() == 0


def test_empty_sigmas_return_the_latent_unchanged():
    latent = torch.randn(1, 4, 2, 2)
    assert sample(denoiser(), latent, torch.randn(1, 4, 2, 2), SIGMAS[:0], "euler") is latent


def test_initial_noise_is_scaled_for_max_denoise_and_otherwise_by_sigma():
    latent, noise = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    # a single sigma runs no step: what comes back is the noised starting point
    top = torch.tensor([SD.sigma_max * (1 - 5e-6)])
    torch.testing.assert_close(sample(denoiser(), latent, noise, top, "euler"),
                               latent + noise * math.sqrt(1 + float(top) ** 2))
    mid = torch.tensor([3.0])
    torch.testing.assert_close(sample(denoiser(), latent, noise, mid, "euler"), latent + noise * 3.0)


def test_full_run_matches_the_sampler_on_the_scaled_noise():
    sigmas = compute_sigmas(SD, "karras", 8)
    latent, noise = torch.zeros(2, 4, 4, 4), initial_noise((1, 4, 4, 4), [1, 2])
    den = denoiser()
    expected = SAMPLERS["dpmpp_2m"](den, noise * torch.sqrt(1 + sigmas[0] ** 2), sigmas)
    torch.testing.assert_close(sample(den, latent, noise, sigmas, "dpmpp_2m"), expected)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "lcm", "dpmpp_2s_ancestral"])
def test_a_batch_of_jobs_equals_each_job_alone(name):
    sigmas = compute_sigmas(SD, "normal", 6, sampler_name=name)
    seeds, shape = [5, 6, 7], (2, 4, 4, 4)
    latent = torch.zeros(6, 4, 4, 4)
    cfgs = torch.tensor([5.0, 5.0, 1.0, 1.0, 8.0, 8.0])
    pos_rows = Conditioning(embeds=torch.linspace(0.1, 0.6, 6).reshape(6, 1, 1).expand(6, 77, 8).contiguous())
    neg = Conditioning(embeds=torch.zeros(1, 77, 8))
    batched = sample(CFGDenoiser(toy_eps, SD, pos_rows, neg, cfg=cfgs), latent, initial_noise(shape, seeds),
                     sigmas, name, seeds=seeds)
    for k, seed in enumerate(seeds):
        rows = slice(2 * k, 2 * k + 2)
        den = CFGDenoiser(toy_eps, SD, Conditioning(embeds=pos_rows.embeds[rows]), neg, cfg=float(cfgs[2 * k]))
        alone = sample(den, latent[rows], initial_noise(shape, [seed]), sigmas, name, seeds=[seed])
        torch.testing.assert_close(batched[rows], alone, rtol=1e-6, atol=1e-6)


def test_stochastic_sampler_without_seeds_is_refused():
    with pytest.raises(ValueError, match="seeds"):
        sample(denoiser(), torch.zeros(1, 4, 2, 2), torch.randn(1, 4, 2, 2), SIGMAS, "euler_ancestral")


def test_unknown_sampler_names_the_valid_ones():
    with pytest.raises(ValueError, match="dpmpp_2m"):
        sample(denoiser(), torch.zeros(1, 4, 2, 2), torch.randn(1, 4, 2, 2), SIGMAS, "dpm_fast")
