"""Classifier-free guidance around an eps-prediction UNet, in k-diffusion's model interface.

The UNet is any callable `eps_fn(x_in [N,C,H,W], timestep [N], cond: CondBatch) -> eps`;
the farm's model layer adapts a diffusers UNet to it. Rows may belong to different jobs:
each row can have its own prompt (rows of Conditioning) and its own cfg scale."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from farm.errors import InvalidInputError
from farm.sampling.control import ControlHint, rebase
from farm.sampling.model_sampling import DiscreteSchedule


@dataclass(frozen=True, eq=False)
class Conditioning:
    """One side of the guidance (positive or negative) for a batch: one row shared by every
    latent row, or one row per latent row.

    ComfyUI's CONDITIONING is a list of entries; this value is its first entry, and `rest`
    holds the others (ConditioningCombine), each with empty `rest`. The fields after
    `time_ids` are ComfyUI's entry options: where on the latent the entry acts, with what
    weight, over which part of the schedule (see farm.sampling.regions), and SDXL's size
    conditioning."""

    embeds: Tensor  # [1 or B, T, D] text-encoder hidden states; T a multiple of 77
    pooled: Tensor | None = None  # [1 or B, P] pooled text embedding (SDXL), else None
    time_ids: Tensor | None = None  # [1 or B, K] SDXL size/crop conditioning, else None
    control: tuple[ControlHint, ...] = ()  # ControlNets on these rows (farm.sampling.control)
    area: Any = None  # farm.sampling.regions.Area; None: the whole latent
    strength: float = 1.0  # the entry's weight where entries overlap
    start_percent: float | None = None  # ConditioningSetTimestepRange: active from here ...
    end_percent: float | None = None  # ... to here (0 = first step, 1 = last)
    size: Any = None  # farm.sampling.regions.SizeConditioning (CLIPTextEncodeSDXL); None: the latent's size
    rest: tuple["Conditioning", ...] = ()  # the list's further entries

    def entries(self) -> tuple["Conditioning", ...]:
        """ComfyUI's list: this entry (without `rest`) followed by the others."""
        if not self.rest:
            return (self,)
        return (dataclasses.replace(self, rest=()), *self.rest)

    @staticmethod
    def from_entries(entries: "Sequence[Conditioning]") -> "Conditioning":
        flat = [e for entry in entries for e in entry.entries()]
        if not flat:
            raise InvalidInputError("a conditioning needs at least one entry")
        return dataclasses.replace(flat[0], rest=tuple(flat[1:]))

    def map_entries(self, fn: "Callable[[Conditioning], Conditioning]") -> "Conditioning":
        """Each entry through `fn`, as ComfyUI's conditioning_set_values applies to every entry."""
        return Conditioning.from_entries([fn(e) for e in self.entries()])

    @property
    def is_plain(self) -> bool:
        """One entry over the whole latent for the whole schedule: the CFGDenoiser's case."""
        return not self.rest and self.area is None and self.start_percent is None and self.end_percent is None


@dataclass(frozen=True, eq=False)
class CondBatch:
    """What eps_fn receives: the conditioning of every row of x_in, in the same order."""

    embeds: Tensor  # [N, T, D]
    pooled: Tensor | None  # [N, P] or None
    time_ids: Tensor | None  # [N, K] or None
    control: tuple[ControlHint, ...] = ()  # each hint's rows are rows of x_in
    sigma: Tensor | None = None  # [N], the step's sigma per row: set when there are hints


EpsFn = Callable[[Tensor, Tensor, CondBatch], Tensor]


def _rows(t: Tensor, batch: int, what: str) -> Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise InvalidInputError(f"{what} has {t.shape[0]} rows for a latent batch of {batch}: give 1 row (shared) or {batch}")


def _stack(conds: list[Conditioning], batch: int) -> CondBatch:
    """Concatenate the sides row-wise. Token lengths that differ (a long prompt is several
    77-token chunks) are repeated up to their least common multiple, as ComfyUI does: attention
    over a key sequence repeated k times gives the same output as over the sequence once."""
    if len({c.embeds.shape[-1] for c in conds}) > 1:
        raise InvalidInputError("positive and negative conditioning come from different text encoders "
                         f"(widths {[c.embeds.shape[-1] for c in conds]}); encode both with the same CLIP")
    for field in ("pooled", "time_ids"):
        if len({getattr(c, field) is None for c in conds}) > 1:
            raise InvalidInputError(f"one side of the conditioning has {field} and the other has not; "
                             "encode positive and negative with the same model")
    tokens = math.lcm(*(c.embeds.shape[1] for c in conds))
    embeds = torch.cat([_rows(c.embeds, batch, "conditioning").repeat(1, tokens // c.embeds.shape[1], 1)
                        for c in conds])
    pooled = None if conds[0].pooled is None else torch.cat([_rows(c.pooled, batch, "pooled output") for c in conds])
    time_ids = None if conds[0].time_ids is None else torch.cat([_rows(c.time_ids, batch, "time ids") for c in conds])
    control = tuple(h for i, c in enumerate(conds) for h in rebase(c.control, i * batch, batch))
    return CondBatch(embeds=embeds, pooled=pooled, time_ids=time_ids, control=control)


class CFGDenoiser:
    """D(x, sigma) = uncond + (cond - uncond) * cfg, each side x - eps * sigma.

    The UNet sees x / sqrt(sigma^2 + 1) (the VP-scaled latent) and the integer timestep whose
    table sigma is nearest, as in ComfyUI. Both sides run in one eps_fn call of 2B rows
    (positive rows first); when every row's cfg is 1 the negative side is skipped."""

    def __init__(self, eps_fn: EpsFn, schedule: DiscreteSchedule, positive: Conditioning,
                 negative: Conditioning | None, cfg: float | Tensor):
        self.eps_fn, self.schedule = eps_fn, schedule
        self.positive, self.negative = positive, negative
        self.cfg = torch.as_tensor(cfg, dtype=torch.float32).reshape(-1)  # [1] or [B]
        # Rows whose cfg is 1 take the positive prediction as is, as ComfyUI does with cfg 1
        # (bit-identical to running that row alone with the negative side skipped).
        self._cfg_is_one = torch.tensor([math.isclose(float(c), 1.0) for c in self.cfg])
        if negative is None and not bool(self._cfg_is_one.all()):
            raise InvalidInputError(f"cfg {[round(float(c), 4) for c in self.cfg]} needs negative conditioning: "
                                    "connect a negative prompt, or set cfg to 1.0")
        self._cond_cache: dict[tuple[int, bool], CondBatch] = {}  # (rows, both sides) -> batch

    def subset(self, rows: Sequence[int]) -> "CFGDenoiser | None":
        """The denoiser of these rows of the batch alone (farm.sampling.row_schedules), or
        None where ControlNet hints tie rows to their place in the batch."""
        if self.positive.control or (self.negative is not None and self.negative.control):
            return None
        index = torch.tensor(list(rows))

        def pick(t: Tensor | None) -> Tensor | None:
            return t if t is None or t.shape[0] == 1 else t[index.to(t.device)]

        def side(c: Conditioning | None) -> Conditioning | None:
            return None if c is None else dataclasses.replace(c, embeds=pick(c.embeds), pooled=pick(c.pooled),
                                                               time_ids=pick(c.time_ids))
        cfg = self.cfg if self.cfg.numel() == 1 else self.cfg[index]
        return CFGDenoiser(self.eps_fn, self.schedule, side(self.positive), side(self.negative), cfg)

    def _conds(self, batch: int, guided: bool) -> CondBatch:
        key = (batch, guided)
        if key not in self._cond_cache:
            sides = [self.positive, self.negative] if guided else [self.positive]
            self._cond_cache[key] = _stack(sides, batch)
        return self._cond_cache[key]

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args: Any) -> Tensor:
        batch = x.shape[0]
        cfg = _rows(self.cfg, batch, "cfg").to(x.device)
        cfg_is_one = _rows(self._cfg_is_one, batch, "cfg").to(x.device)
        guided = not bool(cfg_is_one.all())
        sides = 2 if guided else 1

        sigma_col = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        x_in = (x / (sigma_col**2 + 1.0) ** 0.5).repeat(sides, *([1] * (x.ndim - 1)))
        timestep = self.schedule.timestep(sigma).float().repeat(sides)
        conds = self._conds(batch, guided)
        if conds.control:  # a ControlNet acts only within its window of sigmas
            conds = dataclasses.replace(conds, sigma=sigma.reshape(-1).expand(batch).repeat(sides))
        eps = self.eps_fn(x_in, timestep, conds).float()
        denoised = x.repeat(sides, *([1] * (x.ndim - 1))) - eps * sigma_col.repeat(sides, *([1] * (x.ndim - 1)))
        if not guided:
            return denoised
        cond, uncond = denoised.chunk(2)
        col = (batch, *([1] * (x.ndim - 1)))
        guided_out = uncond + (cond - uncond) * cfg.reshape(col)
        return torch.where(cfg_is_one.reshape(col), cond, guided_out)
