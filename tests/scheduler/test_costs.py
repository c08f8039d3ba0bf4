"""GPU-time estimates of batches (farm.scheduler.costs)."""
import pytest

from farm.scheduler.costs import ARCHS, batch_s, interpolate, mixed_batch_s


def test_a_batch_of_mixed_steps_costs_each_stretch_at_the_rows_still_in_it():
    arch = ARCHS["sd15"]
    assert mixed_batch_s(arch, [20, 20, 20]) == pytest.approx(batch_s(arch, 20, 3))
    # 2 rows for 20 steps, then the 30-step row alone for 10 more
    expected = (20 * interpolate(arch.unet_step_ms, 2) + 10 * interpolate(arch.unet_step_ms, 1)
                + interpolate(arch.vae_decode_ms, 2)) / 1000
    assert mixed_batch_s(arch, [30, 20]) == pytest.approx(expected)
    assert batch_s(arch, 20, 2) < mixed_batch_s(arch, [30, 20]) < batch_s(arch, 30, 2)
