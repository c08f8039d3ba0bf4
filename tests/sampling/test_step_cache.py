"""The step cache's decisions on a hand-made eps function, where every quantity is known:
which steps run, which are skipped, and what a skipped step returns."""
import pytest
import torch

from farm.errors import InvalidInputError
from farm.sampling import DiscreteSchedule
from farm.sampling.schedules import normal
from farm.sampling.step_cache import StepCache, StepCacheSettings

SCHEDULE = DiscreteSchedule.sd()
SIGMAS = normal(SCHEDULE, 20)[:-1]  # the 20 steps' sigmas


class Recorder:
    """eps = 0.5 x + 0.1: a transformation that changes slowly, as the cache assumes."""

    def __init__(self):
        self.sigmas: list[float] = []

    def __call__(self, x_in, timestep, cond):
        self.sigmas.append(float(SCHEDULE.sigma(timestep[0])))
        return 0.5 * x_in + 0.1


def drive(settings: StepCacheSettings):
    eps = Recorder()
    cache = StepCache(eps, settings, SCHEDULE, side_rows=1)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)  # 2 rows: positive and negative side of one job
    outputs = []
    for i, sigma in enumerate(SIGMAS):
        x_in = x * (1 - 0.01 * i)  # the input drifts slowly, step by step
        timestep = SCHEDULE.timestep(sigma.reshape(1)).float().repeat(2)
        outputs.append((x_in, cache(x_in, timestep, None)))
    return cache, eps, outputs


def test_threshold_zero_runs_every_step_and_changes_nothing():
    cache, eps, outputs = drive(StepCacheSettings(reuse_threshold=0.0))
    assert cache.skipped == 0 and len(eps.sigmas) == 20
    for x_in, out in outputs:
        assert torch.equal(out, 0.5 * x_in + 0.1)


def test_a_large_threshold_skips_inside_the_window_only():
    settings = StepCacheSettings(reuse_threshold=3.0, start_percent=0.2, end_percent=0.8)
    cache, eps, outputs = drive(settings)
    start, end = SCHEDULE.percent_to_sigma(0.2), SCHEDULE.percent_to_sigma(0.8)
    before = [float(s) for s in SIGMAS if s > start]
    window = [float(s) for s in SIGMAS if end < s <= start]
    after = [float(s) for s in SIGMAS if s <= end]
    assert before and len(window) >= 4 and after
    # the window's first step runs and measures the rate k (its input and output change
    # against the step before); from then on the summed estimate stays under 3.0, so every
    # further window step is skipped
    assert eps.sigmas == pytest.approx(before + window[:1] + after, rel=1e-2)  # timesteps are rounded
    assert cache.skipped == len(window) - 1 and cache.calls == 20


def test_a_skipped_step_applies_the_last_computed_transformation():
    cache, eps, outputs = drive(StepCacheSettings(reuse_threshold=3.0, start_percent=0.2, end_percent=0.8))
    last_computed = None
    for x_in, out in outputs:
        if torch.equal(out, 0.5 * x_in + 0.1):
            last_computed = (x_in, out)
            continue
        x_last, out_last = last_computed
        torch.testing.assert_close(out, x_in + (out_last - x_last))
    assert last_computed is not None


def test_the_summed_estimate_forces_a_step_once_it_reaches_the_threshold():
    # with a small threshold some window steps run and some are skipped
    few = drive(StepCacheSettings(reuse_threshold=0.02, start_percent=0.0, end_percent=1.0))[0]
    many = drive(StepCacheSettings(reuse_threshold=3.0, start_percent=0.0, end_percent=1.0))[0]
    assert 0 < few.skipped < many.skipped


@pytest.mark.parametrize("kwargs", [{"start_percent": 0.9, "end_percent": 0.1}, {"reuse_threshold": -1.0},
                                    {"end_percent": 1.5}])
def test_settings_out_of_range_are_refused(kwargs):
    with pytest.raises(InvalidInputError, match="EasyCache"):
        StepCacheSettings(**kwargs)
