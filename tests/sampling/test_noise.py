import pytest
import torch
import torchsde

from farm.sampling.noise import (
    BrownianNoiseSampler,
    NoiseKind,
    NoiseSampler,
    initial_noise,
    make_noise_sampler,
)

SHAPE = (2, 4, 3, 5)  # one job's latent: batch 2, 4 channels, 3x5
SIGMAS = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.3, 0.0])


def comfy_prepare_noise(shape, seed):
    """ComfyUI's definition: the global CPU generator seeded with the seed, randn of the whole latent."""
    with torch.random.fork_rng(devices=[]):
        generator = torch.manual_seed(seed)
        return torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")


def test_initial_noise_is_each_jobs_own_draw_concatenated():
    seeds = [0, 42, 2**64 - 1]
    noise = initial_noise(SHAPE, seeds)
    assert noise.shape == (6, 4, 3, 5) and noise.dtype == torch.float32 and noise.device.type == "cpu"
    for k, seed in enumerate(seeds):
        assert torch.equal(noise[2 * k:2 * k + 2], comfy_prepare_noise(SHAPE, seed))


def test_gaussian_noise_sampler_batched_equals_per_job_and_comfy_cpu_stream():
    like = torch.zeros(4, 4, 3, 5)
    batched = NoiseSampler(like, [7, 9])
    alone = [NoiseSampler(like[:2], [7]), NoiseSampler(like[:2], [9])]
    # ComfyUI on CPU: a generator seeded with seed + 1 drawing randn of the job's latent shape
    reference = torch.Generator().manual_seed(8)
    for _ in range(3):
        draw = batched(SIGMAS[0], SIGMAS[1])
        assert torch.equal(draw, torch.cat([alone[0](SIGMAS[0], SIGMAS[1]), alone[1](SIGMAS[0], SIGMAS[1])]))
        assert torch.equal(draw[:2], torch.randn(SHAPE, generator=reference))


def test_brownian_noise_sampler_batched_equals_per_job_and_torchsde_tree():
    like = torch.zeros(4, 4, 3, 5)
    batched = BrownianNoiseSampler(like, [3, 11], SIGMAS)
    alone = [BrownianNoiseSampler(like[:2], [s], SIGMAS) for s in (3, 11)]
    tree = torchsde.BrownianTree(torch.tensor(0.3), torch.zeros(SHAPE), torch.tensor(14.6), entropy=11)
    for a, b in [(SIGMAS[1], SIGMAS[2]), (SIGMAS[2], SIGMAS[3]), (SIGMAS[3], torch.tensor(0.7))]:
        draw = batched(a, b)
        assert torch.equal(draw, torch.cat([alone[0](a, b), alone[1](a, b)]))
        # sigma decreases: the increment W(b) - W(a) over a negative time step, normalised
        expected = -tree(b, a) / (a - b).sqrt()
        torch.testing.assert_close(draw[2:], expected, rtol=1e-6, atol=1e-6)


def test_brownian_increments_are_additive_and_repeatable():
    like = torch.zeros(1, 4, 32, 32)
    ns = BrownianNoiseSampler(like, [5], SIGMAS)
    a, m, b = SIGMAS[1], torch.tensor(2.0), SIGMAS[3]
    whole = ns(a, b) * (a - b).sqrt()
    parts = ns(a, m) * (a - m).sqrt() + ns(m, b) * (m - b).sqrt()
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-4)
    assert torch.equal(ns(a, b), ns(a, b))
    assert abs(float(ns(a, b).std()) - 1.0) < 0.1


def test_noise_blocks_must_split_evenly():
    with pytest.raises(ValueError, match="one seed per job"):
        NoiseSampler(torch.zeros(3, 4, 2, 2), [1, 2])


def test_make_noise_sampler_by_kind():
    like = torch.zeros(2, 4, 2, 2)
    assert make_noise_sampler(NoiseKind.NONE, like, [1], SIGMAS) is None
    assert isinstance(make_noise_sampler(NoiseKind.GAUSSIAN, like, [1], SIGMAS), NoiseSampler)
    assert isinstance(make_noise_sampler(NoiseKind.BROWNIAN, like, [1], SIGMAS), BrownianNoiseSampler)
