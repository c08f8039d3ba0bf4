"""Every registered sampler on data whose exact denoiser is known: x0 ~ N(mu, s^2) per element,
so D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and the probability-flow ODE carries
x_T to x_0 = mu + (x_T - mu) * s / sqrt(s^2 + sigma_T^2)."""
import math

import numpy as np
import pytest
import torch

from farm.sampling.model_sampling import DiscreteSchedule
from farm.sampling.noise import BrownianNoiseSampler, NoiseKind, NoiseSampler
from farm.sampling.samplers import SAMPLER_NOISE, SAMPLERS, StepInfo
from farm.sampling.schedules import compute_sigmas

SD = DiscreteSchedule.sd()
MU, S = 0.5, 0.8


def gaussian_denoiser(x, sigma):
    s2, sig2 = S**2, sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (s2 * x + sig2 * MU) / (s2 + sig2)


def flow_then_denoise(x_t, sigmas):
    """The exact flow from sigmas[0] to the last positive sigma, then the final step to 0 that
    every sampler here takes as one jump to D(x)."""
    s_first, s_last = float(sigmas[0]), sigmas[-2:-1]
    x_last = MU + (x_t - MU) * math.sqrt(S**2 + float(s_last) ** 2) / math.sqrt(S**2 + s_first**2)
    return gaussian_denoiser(x_last, s_last)


def noise_for(name, x, seeds, sigmas):
    kind = SAMPLER_NOISE[name]
    if kind is NoiseKind.GAUSSIAN:
        return NoiseSampler(x, seeds)
    if kind is NoiseKind.BROWNIAN:
        return BrownianNoiseSampler(x, seeds, sigmas)
    return None


def test_registry_has_comfyui_names():
    expected = {"euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim", "lcm", "uni_pc", "uni_pc_bh2"}
    assert expected <= set(SAMPLERS)


DETERMINISTIC = sorted(n for n, k in SAMPLER_NOISE.items() if k is NoiseKind.NONE)


ORDER = {"euler": 1, "ddim": 1, "heun": 2, "dpm_2": 2, "dpmpp_2m": 2, "lms": 2, "uni_pc": 2, "uni_pc_bh2": 2}


def exact_flow(x_t, sigma_from, sigma_to):
    return MU + (x_t - MU) * math.sqrt(S**2 + sigma_to**2) / math.sqrt(S**2 + sigma_from**2)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_ode_samplers_converge_to_the_exact_flow_at_their_order(name):
    errors = []
    for steps in (20, 40):
        sigmas = compute_sigmas(SD, "karras", steps, sampler_name=name)
        x_t = torch.linspace(-3, 3, 64).reshape(1, 1, 8, 8) * math.sqrt(S**2 + float(sigmas[0]) ** 2) + MU
        out = SAMPLERS[name](gaussian_denoiser, x_t, sigmas)
        if name.startswith("uni_pc"):
            # UniPC's last step is a first-order exponential step to sigma 0.001 instead of a jump to D
            s_last = sigmas[-2:-1]
            x_last = exact_flow(x_t, float(sigmas[0]), float(s_last))
            h = math.log(float(s_last) / 0.001)
            expected = 0.001 / s_last * x_last - math.expm1(-h) * gaussian_denoiser(x_last, s_last)
        else:
            expected = flow_then_denoise(x_t, sigmas)
        errors.append(float((out - expected).abs().max()))
    # halving the step size divides the global error by about 2^order
    assert errors[1] / errors[0] < {1: 0.6, 2: 0.3}[ORDER[name]]
    assert errors[1] < {1: 0.1, 2: 0.01}[ORDER[name]]


def lcm_variance(sigmas):
    """LCM with a mean-predicting denoiser: x <- D(x) + sigma_next z contracts the variance as
    v <- s^4 v / (s^2 + sigma^2)^2 + sigma_next^2, starting from v = s^2 + sigma_0^2."""
    v = S**2 + float(sigmas[0]) ** 2
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        v = S**4 * v / (S**2 + sigma**2) ** 2 + sigma_next**2
    return v


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_turns_noise_into_the_data_distribution(name):
    # the Brownian trees of the SDE samplers cost CPU time; they converge well in fewer steps
    steps = 50 if SAMPLER_NOISE[name] is NoiseKind.BROWNIAN else 100
    sigmas = compute_sigmas(SD, "karras", steps, sampler_name=name)
    gen = torch.Generator().manual_seed(0)
    x_t = MU + torch.randn(4, 4, 32, 32, generator=gen) * math.sqrt(S**2 + float(sigmas[0]) ** 2)
    out = SAMPLERS[name](gaussian_denoiser, x_t, sigmas, noise_sampler=noise_for(name, x_t, [1, 2, 3, 4], sigmas))
    expected_std = math.sqrt(lcm_variance(sigmas)) if name == "lcm" else S
    assert abs(float(out.mean()) - MU) < 0.02
    assert abs(float(out.std()) - expected_std) < (0.04 if ORDER.get(name) == 1 or name == "euler_ancestral" else 0.015)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_batched_jobs_equal_jobs_run_alone(name):
    sigmas = compute_sigmas(SD, "normal", 6, sampler_name=name)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 4, 4, generator=gen) * float(sigmas[0])
    seeds = [10, 20]
    batched = SAMPLERS[name](gaussian_denoiser, x, sigmas, noise_sampler=noise_for(name, x, seeds, sigmas))
    for k, seed in enumerate(seeds):
        block = x[2 * k:2 * k + 2]
        alone = SAMPLERS[name](gaussian_denoiser, block, sigmas, noise_sampler=noise_for(name, block, [seed], sigmas))
        torch.testing.assert_close(batched[2 * k:2 * k + 2], alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_reports_every_step(name):
    sigmas = compute_sigmas(SD, "karras", 5, sampler_name=name)
    x = torch.randn(1, 1, 2, 2) * float(sigmas[0])
    seen: list[StepInfo] = []
    SAMPLERS[name](gaussian_denoiser, x, sigmas, callback=seen.append, noise_sampler=noise_for(name, x, [0], sigmas))
    assert [s.i for s in seen] == list(range(len(sigmas) - 1))
    assert all(s.total == len(sigmas) - 1 for s in seen)
    assert [s.sigma for s in seen] == pytest.approx(sigmas[:-1].tolist())
    torch.testing.assert_close(seen[0].denoised, gaussian_denoiser(x, sigmas[:1]))


def test_stochastic_samplers_depend_on_the_seed():
    sigmas = compute_sigmas(SD, "karras", 8)
    x = torch.randn(1, 4, 8, 8) * float(sigmas[0])
    for name in (n for n, k in SAMPLER_NOISE.items() if k is not NoiseKind.NONE):
        a = SAMPLERS[name](gaussian_denoiser, x, sigmas, noise_sampler=noise_for(name, x, [1], sigmas))
        b = SAMPLERS[name](gaussian_denoiser, x, sigmas, noise_sampler=noise_for(name, x, [2], sigmas))
        c = SAMPLERS[name](gaussian_denoiser, x, sigmas, noise_sampler=noise_for(name, x, [1], sigmas))
        assert torch.equal(a, c) and not torch.allclose(a, b), name


def test_euler_equals_diffusers_euler_discrete_with_custom_sigmas():
    from diffusers import EulerDiscreteScheduler

    sigmas = compute_sigmas(SD, "karras", 12)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sched.set_timesteps(sigmas=sigmas.tolist())
    torch.testing.assert_close(sched.sigmas, sigmas)
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3)) * float(sigmas[0])
    x = x0.clone()
    for i, t in enumerate(sched.timesteps):
        sigma = sigmas[i:i + 1]
        eps = (x - gaussian_denoiser(x, sigma)) / sigma
        x = sched.step(eps, t, x).prev_sample
    torch.testing.assert_close(SAMPLERS["euler"](gaussian_denoiser, x0, sigmas), x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [4, 12])
def test_dpmpp_2m_equals_diffusers_dpmsolver_multistep(steps):
    from diffusers import DPMSolverMultistepScheduler

    sigmas = compute_sigmas(SD, "karras", steps)
    sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                        final_sigmas_type="zero")
    sched.set_timesteps(steps)
    sched.sigmas = sigmas.clone()  # run diffusers' solver on exactly our sigmas
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(4)) * float(sigmas[0])
    # diffusers works on VP samples x_vp = x / sqrt(1 + sigma^2)
    x_vp = x0 / math.sqrt(1 + float(sigmas[0]) ** 2)
    for i, t in enumerate(sched.timesteps):
        sigma = sigmas[i:i + 1]
        x = x_vp * torch.sqrt(1 + sigma**2)
        eps = (x - gaussian_denoiser(x, sigma)) / sigma
        x_vp = sched.step(eps, t, x_vp).prev_sample
    torch.testing.assert_close(SAMPLERS["dpmpp_2m"](gaussian_denoiser, x0, sigmas), x_vp, rtol=1e-4, atol=1e-4)


def test_lms_equals_diffusers_lms_discrete():
    from diffusers import LMSDiscreteScheduler

    # ComfyUI's lms jumps straight to D(x) on the last step to 0, diffusers does not: end above 0
    sigmas = compute_sigmas(SD, "exponential", 10)[:-1]
    sched = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sched.set_timesteps(len(sigmas) - 1)
    sched.sigmas = sigmas.clone()
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5)) * float(sigmas[0])
    x = x0.clone()
    for i, t in enumerate(sched.timesteps):
        sigma = sigmas[i:i + 1]
        eps = (x - gaussian_denoiser(x, sigma)) / sigma
        sched.scale_model_input(x, t)  # only marks the step as prepared; the UNet input is unused here
        x = sched.step(eps, t, x).prev_sample
    np.testing.assert_allclose(SAMPLERS["lms"](gaussian_denoiser, x0, sigmas).numpy(), x.numpy(), rtol=1e-4, atol=1e-4)


def test_ddim_is_euler():
    assert SAMPLERS["ddim"] is SAMPLERS["euler"]


@pytest.mark.parametrize(("name", "variant"), [("uni_pc", "bh1"), ("uni_pc_bh2", "bh2")])
@pytest.mark.parametrize("steps", [2, 3, 10])
def test_uni_pc_equals_diffusers_unipc_multistep(name, variant, steps):
    from diffusers import UniPCMultistepScheduler

    sigmas = compute_sigmas(SD, "karras", steps)
    ends_at = sigmas.clone()
    ends_at[-1] = 0.001  # ComfyUI's UniPC (and so ours) stops there instead of at 0
    sched = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    solver_order=3, solver_type=variant, predict_x0=True, lower_order_final=True)
    sched.set_timesteps(steps)
    sched.sigmas = ends_at.clone()
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(6)) * float(sigmas[0])
    x_vp = x0 / math.sqrt(1 + float(sigmas[0]) ** 2)
    for i, t in enumerate(sched.timesteps):
        sigma = ends_at[i:i + 1]
        x = x_vp * torch.sqrt(1 + sigma**2)
        eps = (x - gaussian_denoiser(x, sigma)) / sigma
        x_vp = sched.step(eps, t, x_vp).prev_sample
    expected = x_vp * math.sqrt(1 + 0.001**2)
    torch.testing.assert_close(SAMPLERS[name](gaussian_denoiser, x0, sigmas), expected, rtol=1e-4, atol=1e-4)


def test_uni_pc_with_one_step_keeps_comfyuis_no_move():
    # ComfyUI runs UniPC at order min(3, steps - 1) = 0 for one step: it never moves the latent
    sigmas = torch.tensor([10.0, 0.0])
    x = torch.randn(1, 4, 2, 2)
    out = SAMPLERS["uni_pc"](gaussian_denoiser, x, sigmas)
    torch.testing.assert_close(out, x * math.sqrt((1 + 0.001**2) / (1 + 100.0)))
