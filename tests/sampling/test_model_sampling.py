import math

import numpy as np
import pytest
import torch

from farm.sampling.model_sampling import DiscreteSchedule


@pytest.fixture(scope="module")
def sd():
    return DiscreteSchedule.sd()


def test_sd_table_matches_the_scaled_linear_closed_form(sd):
    betas = np.array([(math.sqrt(0.00085) + k * (math.sqrt(0.012) - math.sqrt(0.00085)) / 999) ** 2
                      for k in range(1000)])
    acp = np.cumprod(1 - betas)
    expected = np.sqrt((1 - acp) / acp)
    assert sd.sigmas.dtype == torch.float32 and sd.sigmas.shape == (1000,)
    np.testing.assert_allclose(sd.sigmas.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(sd.alphas_cumprod.numpy(), acp, rtol=1e-12)
    assert sd.sigma_min == pytest.approx(0.029167, rel=1e-5)
    assert sd.sigma_max == pytest.approx(14.614642, rel=1e-5)


def test_sd_table_matches_diffusers_ddpm_scheduler(sd):
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    acp = ddpm.alphas_cumprod.double()
    np.testing.assert_allclose(sd.sigmas.numpy(), (((1 - acp) / acp) ** 0.5).numpy(), rtol=2e-5)


def test_sigma_at_integer_timesteps_is_the_table(sd):
    t = torch.arange(1000)
    np.testing.assert_allclose(sd.sigma(t).numpy(), sd.sigmas.numpy(), rtol=1e-6)


def test_sigma_between_timesteps_interpolates_log_sigma(sd):
    mid = sd.sigma(torch.tensor([100.5, 700.25]))
    s = sd.sigmas.double()
    expected = [math.sqrt(s[100] * s[101]), math.exp(0.75 * math.log(s[700]) + 0.25 * math.log(s[701]))]
    np.testing.assert_allclose(mid.numpy(), expected, rtol=1e-6)
    assert float(sd.sigma(torch.tensor(-5.0))) == pytest.approx(sd.sigma_min, rel=1e-6)
    assert float(sd.sigma(torch.tensor(5000.0))) == pytest.approx(sd.sigma_max, rel=1e-6)


def test_timestep_is_the_nearest_table_index_in_log_space(sd):
    assert torch.equal(sd.timestep(sd.sigmas), torch.arange(1000))
    s = sd.sigmas.double()
    # just below / above the log-midpoint between entries 400 and 401
    log_mid = (math.log(s[400]) + math.log(s[401])) / 2
    below = torch.tensor([math.exp(log_mid - 1e-4)], dtype=torch.float32)
    above = torch.tensor([math.exp(log_mid + 1e-4)], dtype=torch.float32)
    assert sd.timestep(below).tolist() == [400]
    assert sd.timestep(above).tolist() == [401]
    assert sd.timestep(torch.tensor([100.0, 1e-4])).tolist() == [999, 0]
    assert sd.timestep(torch.tensor(3.0)).shape == ()


def test_percent_to_sigma(sd):
    assert sd.percent_to_sigma(0.0) == pytest.approx(999999999.9)
    assert sd.percent_to_sigma(1.0) == 0.0
    assert sd.percent_to_sigma(0.5) == pytest.approx(math.sqrt(float(sd.sigmas[499]) * float(sd.sigmas[500])), rel=1e-6)
    assert sd.percent_to_sigma(1e-9) == pytest.approx(sd.sigma_max, rel=1e-6)
