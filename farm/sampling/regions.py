"""Conditioning with several entries, areas and timestep ranges, sampled as ComfyUI does it
(comfy/samplers.py: get_area_and_mult, calc_cond_batch, create_cond_with_same_area_if_none,
calculate_start_end_timesteps).

Per side (positive, negative) the denoised prediction is the weighted mean of its entries'
predictions: each active entry's UNet runs on its area's crop of the latent, its x0 there
is added with weight `mult` (its strength, feathered over up to 8 latent cells at edges
inside the image) and the weights are summed; the sum of predictions over the sum of
weights (plus 1e-37, so a pixel no entry covers comes out 0) is the side's prediction.
An entry with a timestep range acts only while sigma is within it. Before sampling, every
area entry of one side gets a twin on the other side (the other side's smallest entry that
covers it, moved to that area), so CFG compares like with like inside every area.

A batch holds several jobs; each job has its own entries. The UNet runs once per crop
shape over every job's entries of that shape, so a batch computes what each job alone
would, to float tolerance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from farm.errors import InvalidInputError
from farm.sampling.denoiser import CondBatch, EpsFn, _rows
from farm.sampling.model_sampling import DiscreteSchedule

FEATHER = 8  # latent cells of ComfyUI's fade at an area's inner edges
_EMPTY_COUNT = 1e-37  # ComfyUI's starting weight: nothing divides by zero


@dataclass(frozen=True)
class Area:
    """ConditioningSetArea's box in latent cells (pixels // 8), or with `percent` the
    fractions of ConditioningSetAreaPercentage, resolved against the latent when sampling."""

    height: float
    width: float
    y: float
    x: float
    percent: bool = False

    def cells(self, latent_h: int, latent_w: int) -> tuple[int, int, int, int]:
        """(h, w, y, x) in latent cells, cut to the latent as ComfyUI cuts it."""
        if self.percent:
            h, w = max(1, round(self.height * latent_h)), max(1, round(self.width * latent_w))
            y, x = round(self.y * latent_h), round(self.x * latent_w)
        else:
            h, w, y, x = int(self.height), int(self.width), int(self.y), int(self.x)
        if y >= latent_h or x >= latent_w:
            raise InvalidInputError(f"a conditioning area starts at x={x * 8}, y={y * 8} px, outside the "
                                    f"{latent_w * 8}x{latent_h * 8} image; move it inside the image")
        return min(h, latent_h - y), min(w, latent_w - x), y, x


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's size/crop conditioning (CLIPTextEncodeSDXL) or the refiner's size and
    aesthetic score (CLIPTextEncodeSDXLRefiner); a field left None takes the default."""

    width: int | None = None
    height: int | None = None
    crop_w: int = 0
    crop_h: int = 0
    target_width: int | None = None
    target_height: int | None = None
    aesthetic_score: float | None = None


@dataclass(frozen=True, eq=False)
class Region:
    """One entry of one job's side, resolved for a run: its tensors and where and when it acts."""

    embeds: Tensor  # [1, T, D]
    pooled: Tensor | None  # [1, P]
    time_ids: Tensor | None  # [1, K]
    area: tuple[int, int, int, int] | None  # (h, w, y, x) latent cells; None: everywhere
    strength: float = 1.0
    sigma_start: float | None = None  # inactive above this sigma
    sigma_end: float | None = None  # inactive below it
    _mult: dict = field(default_factory=dict, repr=False)

    def active(self, sigma: float) -> bool:
        if self.sigma_start is not None and sigma > self.sigma_start:
            return False
        return not (self.sigma_end is not None and sigma < self.sigma_end)

    def window(self, latent_h: int, latent_w: int) -> tuple[int, int, int, int]:
        return self.area if self.area is not None else (latent_h, latent_w, 0, 0)

    def mult(self, latent_h: int, latent_w: int, device) -> Tensor:
        """[1, 1, h, w] weights over the entry's window: strength, faded at inner edges."""
        key = (latent_h, latent_w, str(device))
        if key not in self._mult:
            h, w, y, x = self.window(latent_h, latent_w)
            m = torch.full((1, 1, h, w), float(self.strength), device=device)
            if self.area is not None:
                for dim, (size, start, full) in enumerate(((h, y, latent_h), (w, x, latent_w))):
                    fade = min(FEATHER, size // 4)
                    for t in range(fade):
                        ramp = (1.0 / fade) * (t + 1)
                        if start != 0:
                            m.narrow(dim + 2, t, 1).mul_(ramp)
                        if start + size < full:
                            m.narrow(dim + 2, size - 1 - t, 1).mul_(ramp)
            self._mult[key] = m
        return self._mult[key]


def resolve_regions(cond, latent_h: int, latent_w: int, schedule: DiscreteSchedule, time_ids) -> list[Region]:
    """A job's side as Regions. `time_ids(entry)` gives an entry's SDXL ids (or None)."""
    regions = []
    for entry in cond.entries():
        area = None if entry.area is None else entry.area.cells(latent_h, latent_w)
        start = None if entry.start_percent is None else schedule.percent_to_sigma(entry.start_percent)
        end = None if entry.end_percent is None else schedule.percent_to_sigma(entry.end_percent)
        pooled = None if entry.pooled is None else entry.pooled[:1]
        regions.append(Region(entry.embeds[:1], pooled, time_ids(entry), area, float(entry.strength), start, end))
    return regions


def _inside(inner: tuple, outer: tuple) -> bool:
    (h, w, y, x), (oh, ow, oy, ox) = inner, outer
    return y >= oy and x >= ox and y + h <= oy + oh and x + w <= ox + ow


def add_opposite_areas(side: list[Region], other: list[Region]) -> None:
    """For every area entry of `side`, unless `other` has one of the very same area: the
    smallest entry of `other` covering that area (an entry without area covers all, and
    loses to any covering area) is appended to `other`, moved to the area and taking the
    area entry's strength and timestep range (ComfyUI's create_cond_with_same_area_if_none)."""
    for region in list(side):
        if region.area is None:
            continue
        smallest = None
        for candidate in other:
            if candidate.area is None:
                smallest = smallest or candidate
            elif _inside(region.area, candidate.area):
                if smallest is None or smallest.area is None or (
                        math.prod(smallest.area[:2]) > math.prod(candidate.area[:2])):
                    smallest = candidate
        if smallest is None or smallest.area == region.area:
            continue
        other.append(replace(region, embeds=smallest.embeds, pooled=smallest.pooled, time_ids=smallest.time_ids,
                             _mult={}))


class RegionalCFGDenoiser:
    """CFG over per-job lists of Regions; the same call interface as CFGDenoiser.

    positive[j] / negative[j]: job j's regions; each job owns `rows` consecutive rows of x.
    cfg: one scale per row."""

    def __init__(self, eps_fn: EpsFn, schedule: DiscreteSchedule, positive: list[list[Region]],
                 negative: list[list[Region]], cfg: Tensor, rows: int):
        self.eps_fn, self.schedule = eps_fn, schedule
        self.positive, self.negative, self.rows = positive, negative, rows
        self.cfg = torch.as_tensor(cfg, dtype=torch.float32).reshape(-1)
        self._cfg_is_one = torch.tensor([math.isclose(float(c), 1.0) for c in self.cfg])

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor:
        batch, rows = x.shape[0], self.rows
        cfg = _rows(self.cfg, batch, "cfg").to(x.device)
        cfg_is_one = _rows(self._cfg_is_one, batch, "cfg").to(x.device)
        guided = not bool(cfg_is_one.all())
        sides = [self.positive, self.negative] if guided else [self.positive]
        sigma = sigma.reshape(-1).expand(batch) if sigma.numel() == 1 else sigma.reshape(-1)
        now = float(sigma[0])  # one schedule per batch: every row is at the same sigma
        lh, lw = x.shape[-2:]

        groups: dict[tuple, list[tuple[int, int, Region]]] = {}  # crop (h, w) -> (side, job, region)
        for s, side in enumerate(sides):
            for j, regions in enumerate(side):
                for region in regions:
                    if region.active(now):
                        groups.setdefault(region.window(lh, lw)[:2], []).append((s, j, region))

        out = torch.zeros((len(sides), *x.shape), device=x.device, dtype=torch.float32)
        count = torch.full((len(sides), *x.shape), _EMPTY_COUNT, device=x.device, dtype=torch.float32)
        for units in groups.values():
            crops, sig = [], []
            for _, j, region in units:
                h, w, y, x0 = region.window(lh, lw)
                crops.append(x[j * rows:(j + 1) * rows, :, y:y + h, x0:x0 + w])
                sig.append(sigma[j * rows:(j + 1) * rows])
            x_crop, sig = torch.cat(crops), torch.cat(sig)
            sig_col = sig.reshape(-1, 1, 1, 1)
            eps = self.eps_fn(x_crop / (sig_col**2 + 1.0) ** 0.5, self.schedule.timestep(sig).float(),
                              _cond_batch([r for _, _, r in units], rows)).float()
            denoised = x_crop - eps * sig_col
            for k, (s, j, region) in enumerate(units):
                h, w, y, x0 = region.window(lh, lw)
                mult = region.mult(lh, lw, x.device)
                block = (s, slice(j * rows, (j + 1) * rows), slice(None), slice(y, y + h), slice(x0, x0 + w))
                out[block] += denoised[k * rows:(k + 1) * rows] * mult
                count[block] += mult
        out /= count
        if not guided:
            return out[0]
        cond, uncond = out[0], out[1]
        col = (batch, 1, 1, 1)
        return torch.where(cfg_is_one.reshape(col), cond, uncond + (cond - uncond) * cfg.reshape(col))


def _cond_batch(regions: list[Region], rows: int) -> CondBatch:
    """The regions' tensors, `rows` rows each; token counts repeated to a common multiple."""
    if len({r.embeds.shape[-1] for r in regions}) > 1:
        raise InvalidInputError("the conditioning entries come from different text encoders "
                                f"(widths {sorted({r.embeds.shape[-1] for r in regions})}); use one CLIP for all")
    tokens = math.lcm(*(r.embeds.shape[1] for r in regions))
    embeds = torch.cat([r.embeds.repeat(rows, tokens // r.embeds.shape[1], 1) for r in regions])
    if any(r.pooled is None for r in regions) or any(r.time_ids is None for r in regions):
        if any(r.pooled is not None or r.time_ids is not None for r in regions):
            raise InvalidInputError("some conditioning entries have SDXL's pooled output and others have not; "
                                    "encode every prompt with the same model's CLIP")
        return CondBatch(embeds, None, None)
    pooled = torch.cat([r.pooled.repeat(rows, 1) for r in regions])
    time_ids = torch.cat([r.time_ids.repeat(rows, 1) for r in regions])
    return CondBatch(embeds, pooled, time_ids)
