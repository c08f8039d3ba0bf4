"""Sampling as ComfyUI does it for eps-prediction models (SD1.x, SDXL): the noise table,
sigma schedules and samplers under ComfyUI's names, seeded noise that is the same on every
device and for every batch composition, and the classifier-free-guidance denoiser."""
from farm.sampling.denoiser import CFGDenoiser, CondBatch, Conditioning, EpsFn
from farm.sampling.model_sampling import DiscreteSchedule
from farm.sampling.noise import (
                                 BrownianNoiseSampler,
                                 NoiseFn,
                                 NoiseKind,
                                 NoiseSampler,
                                 initial_noise,
                                 make_noise_sampler,
)
from farm.sampling.sample import is_max_denoise, sample, slice_sigmas
from farm.sampling.samplers import (
                                 SAMPLER_NOISE,
                                 SAMPLERS,
                                 Callback,
                                 Denoiser,
                                 StepInfo,
                                 get_sampler,
)
from farm.sampling.schedules import (
                                 DISCARD_PENULTIMATE_SIGMA_SAMPLERS,
                                 SCHEDULERS,
                                 compute_sigmas,
)

__all__ = [
    "BrownianNoiseSampler", "CFGDenoiser", "Callback", "CondBatch", "Conditioning",
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "Denoiser", "DiscreteSchedule", "EpsFn", "NoiseFn", "NoiseKind", "NoiseSampler", "SAMPLERS", "SAMPLER_NOISE",
    "SCHEDULERS", "StepInfo", "compute_sigmas", "get_sampler", "initial_noise", "is_max_denoise",
    "make_noise_sampler", "sample", "slice_sigmas",
]
