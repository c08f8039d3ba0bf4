"""One schedule per row: jobs that differ in their number of steps sampled as one batch.

The jobs' schedules are stacked into a table sigmas[step, row] of S+1 steps (S the longest
schedule's steps): a job's column holds its own sigmas and then NaN once its schedule has
ended. Samplers of ROW_SCHEDULE_SAMPLERS run the rows in lockstep and leave a finished row's
latent as it was (farm.sampling.samplers_base.keep_finished), so every job gets what it gets
alone. A finished row still occupies its place in the UNet's batch until the longest schedule
ends: mixing 20 and 30 steps costs the 20-step rows ten steps each."""
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

