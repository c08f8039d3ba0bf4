import math

import numpy as np
import pytest
import torch

from farm.sampling.model_sampling import DiscreteSchedule
from farm.sampling.schedules import SCHEDULERS, compute_sigmas

SD = DiscreteSchedule.sd()
TABLE = SD.sigmas.double().numpy()
S_MIN, S_MAX = float(TABLE[0]), float(TABLE[-1])


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("steps", [1, 2, 5, 20, 30])
def test_every_schedule_is_float32_decreasing_and_ends_in_zero(name, steps):
    sigmas = compute_sigmas(SD, name, steps)
    assert sigmas.dtype == torch.float32 and sigmas.ndim == 1
    assert float(sigmas[-1]) == 0.0
    assert bool((sigmas[:-1] > 0).all())
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert float(sigmas[0]) <= S_MAX * (1 + 1e-5)
    if name not in ("ddim_uniform", "beta"):
        assert len(sigmas) == steps + 1


def test_karras_is_the_closed_form():
    n, rho = 12, 7.0
    expected = [(S_MAX ** (1 / rho) + i / (n - 1) * (S_MIN ** (1 / rho) - S_MAX ** (1 / rho))) ** rho
                for i in range(n)] + [0.0]
    np.testing.assert_allclose(SCHEDULERS["karras"](SD, n).numpy(), expected, rtol=2e-6)


def test_exponential_is_geometric():
    n = 9
    expected = [S_MAX * (S_MIN / S_MAX) ** (i / (n - 1)) for i in range(n)] + [0.0]
    np.testing.assert_allclose(SCHEDULERS["exponential"](SD, n).numpy(), expected, rtol=2e-6)


def test_normal_and_sgm_uniform_hit_table_entries_at_integer_timesteps():
    # 999 / 9 = 111: normal with 10 steps lands on timesteps 999, 888, ..., 0
    np.testing.assert_allclose(SCHEDULERS["normal"](SD, 10).numpy()[:-1], TABLE[999::-111], rtol=1e-6)
    # sgm_uniform with 9 steps: linspace(999, 0, 10) without its last point
    np.testing.assert_allclose(SCHEDULERS["sgm_uniform"](SD, 9).numpy()[:-1], TABLE[999:0:-111], rtol=1e-6)


def test_normal_between_integers_interpolates_in_log_space():
    # 3 steps: timesteps 999, 499.5, 0
    mid = float(SCHEDULERS["normal"](SD, 3)[1])
    assert mid == pytest.approx(math.sqrt(TABLE[499] * TABLE[500]), rel=1e-6)


def test_simple_takes_every_kth_entry_from_the_top():
    sigmas = SCHEDULERS["simple"](SD, 10).numpy()
    np.testing.assert_allclose(sigmas[:-1], TABLE[[999 - 100 * k for k in range(10)]], rtol=1e-7)
    # 1000 / 3 is fractional: picks 999, 999 - int(333.33), 999 - int(666.67)
    np.testing.assert_allclose(SCHEDULERS["simple"](SD, 3).numpy()[:-1], TABLE[[999, 666, 333]], rtol=1e-7)


def test_ddim_uniform_uses_timesteps_one_plus_multiples_of_the_stride():
    ten = SCHEDULERS["ddim_uniform"](SD, 10).numpy()
    np.testing.assert_allclose(ten[:-1], TABLE[[901 - 100 * k for k in range(10)]], rtol=1e-7)
    # 1000 // 7 = 142 and 1 + 7 * 142 = 995 < 1000: ComfyUI's schedule has 8 sigmas before the 0
    seven = SCHEDULERS["ddim_uniform"](SD, 7).numpy()
    assert len(seven) == 9
    np.testing.assert_allclose(seven[:-1], TABLE[list(range(1, 1000, 142))[::-1]], rtol=1e-7)


def test_beta_matches_scipy_quantiles():
    stats = pytest.importorskip("scipy.stats")
    for steps in (1, 2, 10, 20, 25, 40, 64):
        ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * 999)
        keep = [t for k, t in enumerate(ts) if k == 0 or t != ts[k - 1]]
        expected = list(TABLE[np.array(keep, dtype=int)]) + [0.0]
        np.testing.assert_allclose(SCHEDULERS["beta"](SD, steps).numpy(), expected, rtol=1e-7, err_msg=f"{steps}")


def test_linear_quadratic_is_linear_then_quadratic():
    steps, thr = 10, 0.025
    frac = SCHEDULERS["linear_quadratic"](SD, steps).double().numpy() / S_MAX
    np.testing.assert_allclose(frac[:5], [1 - i * thr / 5 for i in range(5)], rtol=1e-6)
    # the quadratic part starts where the linear one would continue to, and ends at 0
    assert frac[5] == pytest.approx(1 - thr, rel=1e-6)
    assert frac[-1] == 0.0
    second_diff = np.diff(frac[5:], 2)
    np.testing.assert_allclose(second_diff, second_diff[0], rtol=1e-4)
    np.testing.assert_allclose(SCHEDULERS["linear_quadratic"](SD, 1).numpy(), [S_MAX, 0.0], rtol=1e-7)


def test_kl_optimal_is_evenly_spaced_in_arctan():
    sigmas = SCHEDULERS["kl_optimal"](SD, 8).double().numpy()
    expected = np.tan(np.linspace(math.atan(S_MAX), math.atan(S_MIN), 8))
    np.testing.assert_allclose(sigmas[:-1], expected, rtol=1e-5)
    np.testing.assert_allclose(SCHEDULERS["kl_optimal"](SD, 1).numpy(), [S_MAX, 0.0], rtol=1e-6)


def test_denoise_keeps_the_tail_of_a_longer_schedule():
    full = SCHEDULERS["karras"](SD, 20)
    assert torch.equal(compute_sigmas(SD, "karras", 10, denoise=0.5), full[-11:])
    # int(10 / 0.3) = 33
    assert torch.equal(compute_sigmas(SD, "normal", 10, denoise=0.3), SCHEDULERS["normal"](SD, 33)[-11:])
    assert torch.equal(compute_sigmas(SD, "normal", 10, denoise=1.0), SCHEDULERS["normal"](SD, 10))
    assert torch.equal(compute_sigmas(SD, "normal", 10, denoise=0.99995), SCHEDULERS["normal"](SD, 10))
    assert compute_sigmas(SD, "karras", 10, denoise=0.0).numel() == 0


def test_second_order_samplers_drop_the_penultimate_sigma():
    eleven = SCHEDULERS["karras"](SD, 11)
    expected = torch.cat([eleven[:-2], eleven[-1:]])
    for sampler in ("dpm_2", "dpm_2_ancestral"):
        assert torch.equal(compute_sigmas(SD, "karras", 10, sampler_name=sampler), expected)
    assert torch.equal(compute_sigmas(SD, "karras", 10, sampler_name="euler"), SCHEDULERS["karras"](SD, 10))


def test_unknown_scheduler_names_the_valid_ones():
    with pytest.raises(ValueError, match="karras"):
        compute_sigmas(SD, "linear", 10)
