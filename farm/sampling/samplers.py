"""The sampler registry under ComfyUI's sampler_name values.

Every sampler is a plain function `sample_NAME(model, x, sigmas, extra_args=None,
callback=None, noise_sampler=None) -> Tensor` (k-diffusion's shape): `model(x, sigma[B])`
returns the denoised latent, `x` starts at noise level sigmas[0], and the result is the latent
at sigmas[-1]. SAMPLER_NOISE says which seeded noise source each one consumes."""
from __future__ import annotations

from farm.errors import InvalidInputError
from farm.sampling.noise import NoiseKind
from farm.sampling.samplers_ancestral import (
    sample_dpm_2_ancestral,
    sample_dpmpp_2s_ancestral,
    sample_euler_ancestral,
    sample_lcm,
)
from farm.sampling.samplers_base import Callback, Denoiser, Sampler, StepInfo
from farm.sampling.samplers_ode import (
    sample_dpm_2,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_lms,
)
from farm.sampling.samplers_sde import (
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from farm.sampling.samplers_unipc import sample_uni_pc, sample_uni_pc_bh2

SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    # ComfyUI's "ddim" runs the Euler sampler: for an eps model with alpha folded into sigma,
    # a deterministic DDIM step and an Euler step in sigma are the same update.
    "ddim": sample_euler,
    "lcm": sample_lcm,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}

SAMPLER_NOISE: dict[str, NoiseKind] = {
    "euler": NoiseKind.NONE,
    "euler_ancestral": NoiseKind.GAUSSIAN,
    "heun": NoiseKind.NONE,
    "dpm_2": NoiseKind.NONE,
    "dpm_2_ancestral": NoiseKind.GAUSSIAN,
    "lms": NoiseKind.NONE,
    "dpmpp_2s_ancestral": NoiseKind.GAUSSIAN,
    "dpmpp_sde": NoiseKind.BROWNIAN,
    "dpmpp_2m": NoiseKind.NONE,
    "dpmpp_2m_sde": NoiseKind.BROWNIAN,
    "dpmpp_3m_sde": NoiseKind.BROWNIAN,
    "ddim": NoiseKind.NONE,
    "lcm": NoiseKind.GAUSSIAN,
    "uni_pc": NoiseKind.NONE,
    "uni_pc_bh2": NoiseKind.NONE,
}

assert SAMPLER_NOISE.keys() == SAMPLERS.keys()

# Samplers that take one schedule per row (farm.sampling.row_schedules), so jobs that differ
# in steps share a batch. The others keep one schedule per batch: the SDE samplers query each
# job's Brownian tree at the batch's sigmas, LMS integrates its coefficients over one
# schedule, and UniPC's multistep state is built for one.
ROW_SCHEDULE_SAMPLERS = frozenset({"euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral",
                                   "dpmpp_2s_ancestral", "dpmpp_2m", "ddim", "lcm"})


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise InvalidInputError(f"unknown sampler {name!r}; use one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = ["ROW_SCHEDULE_SAMPLERS", "SAMPLERS", "SAMPLER_NOISE", "Callback", "Denoiser", "Sampler", "StepInfo", "get_sampler"]
