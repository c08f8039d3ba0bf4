"""ControlNet hints on conditioning: which network, which image, how strongly, when, and on
which rows of a batch. The network itself is opaque here (farm.models.controlnet runs it).

ComfyUI keeps a chain of ControlNets on each conditioning entry (cond['control'] and its
previous_controlnet links) and sums their outputs; farm keeps the chain as a tuple of
ControlHint on Conditioning.control. A hint with rows=None covers every row of its
conditioning; when sides and jobs are stacked into one batch each hint is re-based to the
rows it covers there, so jobs with different hints (or none) can share one UNet call."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import Tensor


@dataclass(frozen=True, eq=False)
class ControlHint:
    net: Any  # farm.models.controlnet.LoadedControlNet
    image: Tensor  # [M, C, H, W] in 0..1, as the IMAGE socket gave it (channels first)
    strength: float
    start_percent: float = 0.0
    end_percent: float = 1.0
    # ComfyUI's legacy ControlNetApply: copied onto a negative that has no ControlNet of its own
    apply_to_uncond: bool = False
    rows: tuple[int, ...] | None = None  # rows of the batch it covers; None: all rows of its side
    # the image resized per latent size, shared by every re-based copy of this hint
    prepared: dict = field(default_factory=dict, repr=False)

    def at_rows(self, rows: Sequence[int]) -> "ControlHint":
        return dataclasses.replace(self, rows=tuple(rows))

    def sigma_range(self, schedule) -> tuple[float, float]:
        """(sigma_start, sigma_end): the hint acts while sigma_end <= sigma <= sigma_start,
        ComfyUI's test on its timestep_range."""
        return schedule.percent_to_sigma(self.start_percent), schedule.percent_to_sigma(self.end_percent)


def rebase(hints: Sequence[ControlHint], offset: int, rows: int) -> tuple[ControlHint, ...]:
    """The hints of a conditioning of `rows` rows placed at `offset` in a larger batch."""
    out = []
    for hint in hints:
        own = range(rows) if hint.rows is None else hint.rows
        out.append(hint.at_rows([offset + r for r in own]))
    return tuple(out)


def fill_uncond(positive, negative):
    """positive, negative: farm.sampling.denoiser.Conditioning. ComfyUI's rule for the legacy ControlNetApply (control_apply_to_uncond): when the
    positive's last ControlNet came from it and the negative has none of its own, the
    negative gets the positive's whole chain, so both sides are controlled."""
    if negative is None or negative.control or not positive.control or not positive.control[-1].apply_to_uncond:
        return negative
    return dataclasses.replace(negative, control=positive.control)
