"""Step caching (EasyCache): skip UNet calls whose output can be predicted from the last one.

An approximation, opt-in per workflow through the EasyCache node, never on by default: the
image changes (benchmarks/step_cache.py measures by how much).

The idea (EasyCache, Zhou et al. 2025; ComfyUI's EasyCache node behaves the same way): over
the middle of a schedule the UNet's output moves roughly in proportion to its input, with
a rate k = |out_t - out_{t-1}| / |x_t - x_{t-1}| that changes slowly. After a computed
step, the expected relative change of the output at the next step is

    k * |x_t - x_last| / |out_last|

and these estimates are summed over the steps since the last computed one. While the sum
stays under `reuse_threshold`, the step is skipped and the output is taken as
x_t + (out_last - x_last): the last computed step's transformation, applied to the new
input. Once the sum reaches the threshold the UNet runs and the sum starts again from 0.
Steps before `start_percent` of the schedule and from `end_percent` on always run (the
first shape the image, the last its detail).

The changes are means of absolute values over the first side's rows (the positive prompt),
on a grid subsampled 8x in each direction, as ComfyUI measures them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from farm.errors import InvalidInputError
from farm.sampling.model_sampling import DiscreteSchedule

log = logging.getLogger(__name__)

SUBSAMPLE = 8  # measure changes on every 8th latent pixel in each direction


@dataclass(frozen=True)
class StepCacheSettings:
    """The EasyCache node's inputs."""

    reuse_threshold: float = 0.2  # summed estimated output change that forces a computed step
    start_percent: float = 0.15  # no skipping before this share of the schedule ...
    end_percent: float = 0.95  # ... nor from this share on

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise InvalidInputError(f"EasyCache needs 0 <= start_percent <= end_percent <= 1, got start_percent "
                                    f"{self.start_percent} and end_percent {self.end_percent}")
        if self.reuse_threshold < 0:
            raise InvalidInputError(f"EasyCache reuse_threshold must be >= 0, got {self.reuse_threshold}")


class StepCache:
    """An eps function (x_in, timestep, cond) -> eps that skips calls as described above.

    One instance per sampler run: it keeps the last computed step's input and output."""

    def __init__(self, eps_fn, settings: StepCacheSettings, schedule: DiscreteSchedule, side_rows: int):
        self.eps_fn, self.settings, self.schedule = eps_fn, settings, schedule
        self.side_rows = side_rows  # rows of one side (positive first in x_in)
        self.start_sigma = schedule.percent_to_sigma(settings.start_percent)
        self.end_sigma = schedule.percent_to_sigma(settings.end_percent)
        self.calls = 0  # UNet calls asked for
        self.skipped = 0  # ... of which answered from the cache
        self._x_last: Tensor | None = None  # subsampled input of the last computed step
        self._out_last: Tensor | None = None  # ... its subsampled output
        self._out_norm: Tensor | None = None  # mean |output| of that step
        self._diff: Tensor | None = None  # output - input of that step, every row
        self._rate: Tensor | None = None  # k: output change per input change
        self._summed = 0.0  # estimated relative output change since the last computed step

    def _sub(self, t: Tensor) -> Tensor:
        return t[:self.side_rows, ..., ::SUBSAMPLE, ::SUBSAMPLE]

    def __call__(self, x_in: Tensor, timestep: Tensor, cond) -> Tensor:
        self.calls += 1
        sigma = float(self.schedule.sigma(timestep[:1].float().cpu()))
        if sigma <= self.end_sigma:  # the last part of the schedule always runs, uncached
            return self.eps_fn(x_in, timestep, cond)
        change = None  # measured only inside the window, so k is first known one step into it
        if sigma <= self.start_sigma and self._x_last is not None and self._x_last.shape == self._sub(x_in).shape:
            change = (self._sub(x_in) - self._x_last).abs().mean()
            if self._rate is not None and self._diff is not None and self._diff.shape == x_in.shape:
                self._summed += float(self._rate * change / self._out_norm)
                if self._summed < self.settings.reuse_threshold:
                    self.skipped += 1
                    return x_in + self._diff.to(x_in.dtype)
                self._summed = 0.0
        out = self.eps_fn(x_in, timestep, cond)
        sub_out = self._sub(out)
        if change is not None and self._out_last is not None and float(change) > 0:
            self._rate = (sub_out - self._out_last).abs().mean() / change
        self._diff = out - x_in
        self._x_last, self._out_last = self._sub(x_in).clone(), sub_out.clone()
        self._out_norm = out.abs().mean().clamp_min(torch.finfo(torch.float32).tiny)
        return out

    def summary(self) -> str:
        return f"EasyCache skipped {self.skipped} of {self.calls} UNet calls"
