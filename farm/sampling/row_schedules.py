"""One schedule per row: jobs that differ in their number of steps sampled as one batch.

The jobs' schedules are stacked into a table sigmas[step, row] of S+1 steps (S the longest
schedule's steps): a job's column holds its own sigmas and then NaN once its schedule has
ended. Samplers of ROW_SCHEDULE_SAMPLERS run the rows in lockstep and leave a finished row's
latent as it was (farm.sampling.samplers_base.keep_finished), so every job gets what it gets
alone. The model sees a finished row's sigma as NaN; SkipFinishedRows then leaves that row out
of the UNet call where the denoiser can run a subset of its rows (the plain CFG denoiser),
so a batch of 20- and 30-step jobs runs its last ten steps on the 30-step rows alone."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from farm.errors import InvalidInputError


def stack_schedules(schedules: Sequence[Tensor], rows_per_job: int) -> Tensor:
    """The jobs' 1-D schedules as one: the shared schedule itself when all are equal, else
    the [S+1, rows] table (each job's column repeated over its rows, NaN after its end)."""
    if not schedules:
        raise InvalidInputError("no schedule to stack")
    first = schedules[0]
    if all(s.shape == first.shape and torch.equal(s, first) for s in schedules[1:]):
        return first
    if any(s.numel() == 0 for s in schedules):
        raise InvalidInputError("a job with no step left cannot share a batch with jobs that have steps")
    length = max(s.numel() for s in schedules)
    table = torch.full((length, len(schedules)), float("nan"), dtype=torch.float32)
    for j, s in enumerate(schedules):
        table[:s.numel(), j] = s.float()
    return table.repeat_interleave(rows_per_job, dim=1)


class SkipFinishedRows:
    """The denoiser of a run with one schedule per row: rows whose schedule has ended (sigma
    NaN) are left out of the call where the inner denoiser offers `subset(rows)`; otherwise
    they are evaluated at sigma 0. The sampler discards their output either way."""

    def __init__(self, inner):
        self.inner = inner
        self.schedule = inner.schedule
        self._subsets: dict[tuple[int, ...], object] = {}  # running rows -> the denoiser of those rows

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor:
        finished = sigma.isnan()
        # a host sync per model call, in runs with a schedule table only (which rows run
        # decides the shapes launched next)
        if not bool(finished.any()):
            return self.inner(x, sigma, **extra_args)
        running = tuple((~finished).nonzero().flatten().tolist())
        if running not in self._subsets:
            subset = getattr(self.inner, "subset", None)
            self._subsets[running] = subset(list(running)) if subset is not None else None
        inner = self._subsets[running]
        if inner is None:  # this denoiser runs all its rows: the finished ones at sigma 0
            return self.inner(x, torch.nan_to_num(sigma, nan=0.0), **extra_args)
        index = torch.tensor(running, device=x.device)
        out = x.clone()  # finished rows: any finite value, discarded by the sampler
        out[index] = inner(x[index], sigma[index], **extra_args)
        return out
