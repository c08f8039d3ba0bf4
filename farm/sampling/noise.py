"""Seeded noise: the initial latent noise and the fresh noise that ancestral and SDE samplers
inject at each step.

Everything is drawn on the CPU from per-job generators and only then moved to the device, so
(1) a seed gives the same image on any device, and (2) a batch that holds several jobs,
each a block of rows with its own seed, gets exactly the noise each job would get alone.

What matches ComfyUI and what does not:
- initial noise: identical to ComfyUI's prepare_noise (CPU generator, whole latent batch of a
  job from one seed), on every device.
- ancestral noise (euler_ancestral, dpm_2_ancestral, dpmpp_2s_ancestral, lcm): ComfyUI draws it
  on the latent's device from a generator seeded with the seed (+1 on CPU, so that it differs
  from the initial noise). Here it is always the CPU stream seeded with seed + 1, so results
  equal ComfyUI running on CPU; ComfyUI on CUDA draws other numbers for the same seed.
- SDE noise (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde): a torchsde Brownian tree per job built on
  the CPU with the job's seed as entropy, over [smallest positive sigma, largest sigma]: the
  same construction as ComfyUI's BrownianTreeNoiseSampler(cpu=True), so equal on every device.
"""
from __future__ import annotations

import enum
import warnings
from typing import Callable, Sequence

import torch
import torchsde
from torch import Tensor

from farm.errors import InvalidInputError

# (sigma, sigma_next) -> unit-variance noise shaped like the latent batch
NoiseFn = Callable[[Tensor, Tensor], Tensor]

_SEED_MODULUS = 2**64  # torch generators take seeds in [0, 2^64)


class NoiseKind(enum.Enum):
    """What fresh noise a sampler consumes while it runs."""

    NONE = "none"  # deterministic ODE solvers
    GAUSSIAN = "gaussian"  # independent draws per call (ancestral samplers)
    BROWNIAN = "brownian"  # increments of one Brownian path per job (SDE solvers)


def _cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed % _SEED_MODULUS)


def initial_noise(shape_per_job: Sequence[int], seeds: Sequence[int]) -> Tensor:
    """ComfyUI's prepare_noise for each job (randn of the job's whole latent shape from one
    CPU generator seeded with its seed), concatenated along the batch dimension. CPU float32;
    the caller moves it to the device."""
    blocks = [torch.randn(tuple(shape_per_job), generator=_cpu_generator(seed), dtype=torch.float32)
              for seed in seeds]
    return torch.cat(blocks)


def indexed_noise(shape: Sequence[int], seed: int, batch_index: Sequence[int]) -> Tensor:
    """ComfyUI's prepare_noise with noise_inds: one [1, ...] draw per index from 0 to the
    largest, from one generator, and the drawn rows at `batch_index` in that order."""
    generator = _cpu_generator(seed)
    wanted = set(batch_index)
    rows: dict[int, Tensor] = {}
    for i in range(max(batch_index) + 1):
        row = torch.randn((1, *shape[1:]), generator=generator, dtype=torch.float32)
        if i in wanted:
            rows[i] = row
    return torch.cat([rows[i] for i in batch_index])


def _rows_per_job(like: Tensor, seeds: Sequence[int]) -> int:
    if not seeds or like.shape[0] % len(seeds):
        raise InvalidInputError(f"a batch of {like.shape[0]} rows cannot be split evenly into {len(seeds)} "
                         "job blocks; give one seed per job and equal-sized jobs")
    return like.shape[0] // len(seeds)


class NoiseSampler:
    """Gaussian noise for ancestral samplers: each call draws one block per job from that
    job's CPU generator (seeded with seed + 1, as ComfyUI does on CPU)."""

    def __init__(self, like: Tensor, seeds: Sequence[int]):
        rows = _rows_per_job(like, seeds)
        self._block_shape = (rows, *like.shape[1:])
        self._generators = [_cpu_generator(seed + 1) for seed in seeds]
        self._device, self._dtype = like.device, like.dtype

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        blocks = [torch.randn(self._block_shape, generator=g, dtype=torch.float32) for g in self._generators]
        return torch.cat(blocks).to(device=self._device, dtype=self._dtype)


class BrownianNoiseSampler:
    """Normalised Brownian increments (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)
    for SDE samplers; one torchsde Brownian tree per job, on the CPU, with the job's seed as
    its entropy. Queries are consistent: the same interval always gives the same noise, and
    nested intervals give correlated noise, which dpmpp_sde's two sub-steps rely on."""

    def __init__(self, like: Tensor, seeds: Sequence[int], sigmas: Tensor):
        rows = _rows_per_job(like, seeds)
        sigmas = sigmas.detach().float().cpu()
        t0, t1 = sigmas[sigmas > 0].min(), sigmas.max()
        # ComfyUI orders the tree's ends and remembers the flip; with t0 == t1 (one positive
        # sigma) its ordering says "flipped", and that sign is kept here for equal results.
        self._sign = 1.0 if t0 < t1 else -1.0
        w0 = torch.zeros((rows, *like.shape[1:]), dtype=torch.float32)
        self._trees = [torchsde.BrownianTree(t0, w0, t1, entropy=seed) for seed in seeds]
        self._device, self._dtype = like.device, like.dtype

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (sigma, sigma_next, 1.0) if sigma < sigma_next else (sigma_next, sigma, -1.0)
        lo_cpu, hi_cpu = lo.detach().cpu().float(), hi.detach().cpu().float()
        with warnings.catch_warnings():
            # torchsde rounds the tree's ends, so a query at exactly sigma_max lands a hair past
            # the end; it clamps and warns. The clamp is right (ComfyUI gets the same).
            warnings.filterwarnings("ignore", message="Should have t[ab]<=t1")
            w = torch.cat([tree(lo_cpu, hi_cpu) for tree in self._trees]) * (self._sign * sign)
        w = w.to(device=self._device, dtype=self._dtype)
        return w / (sigma_next - sigma).abs().sqrt().to(self._device)


def unseeded_noise_sampler(x: Tensor) -> NoiseFn:
    """Fresh unseeded noise: the fallback of a sampler called without a noise sampler."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def make_noise_sampler(kind: NoiseKind, like: Tensor, seeds: Sequence[int], sigmas: Tensor) -> NoiseFn | None:
    """The seeded noise source a sampler of this kind needs, or None for ODE samplers."""
    if kind is NoiseKind.GAUSSIAN:
        return NoiseSampler(like, seeds)
    if kind is NoiseKind.BROWNIAN:
        if not bool((sigmas > 0).any()):
            return None  # nothing to integrate: the sampler returns before asking for noise
        return BrownianNoiseSampler(like, seeds, sigmas)
    return None
