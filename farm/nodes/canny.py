"""Canny: the edge map a canny ControlNet takes, as ComfyUI's Canny node computes it.

ComfyUI runs kornia's canny with its defaults (5x5 Gaussian, sigma 1; unnormalised Sobel;
non-maximum suppression along the gradient rounded to 45 degrees; double threshold;
hysteresis over 8-neighbours). This is the same algorithm in plain torch, so farm needs no
kornia: grey = 0.299 R + 0.587 G + 0.114 B, reflect padding for the blur, replicate for
Sobel, zeros beyond the border for the neighbour tests.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from farm.errors import InvalidInputError
from farm.nodes.spec import InputSpec, Node, NodeSpec, OutputSpec

# (dy, dx) of the neighbour in each of the 8 gradient directions, 45 degrees apart,
# starting along +x and turning towards +y (image rows grow downwards)
_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def _blur(x: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    half = (size - 1) / 2
    taps = torch.exp(-0.5 * (torch.linspace(-half, half, size) / sigma) ** 2)
    taps = (taps / taps.sum()).to(x.device, x.dtype)
    kernel = (taps[:, None] @ taps[None, :]).expand(x.shape[1], 1, size, size)
    return F.conv2d(F.pad(x, [size // 2] * 4, mode="reflect"), kernel, groups=x.shape[1])


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    kernel = torch.stack([kx, kx.T])[:, None]
    out = F.conv2d(F.pad(x, [1, 1, 1, 1], mode="replicate"), kernel)
    return out[:, :1], out[:, 1:]


def _neighbour(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x shifted so that each pixel holds its (dy, dx) neighbour; zero beyond the border."""
    padded = F.pad(x, [1, 1, 1, 1])
    h, w = x.shape[-2:]
    return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def canny(image: torch.Tensor, low: float, high: float, eps: float = 1e-6) -> torch.Tensor:
    """Edges of image [B,C,H,W] (C 1 or 3) as [B,1,H,W] of 0 and 1."""
    x = image
    if x.shape[1] == 3:
        x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    gx, gy = _sobel(_blur(x))
    magnitude = torch.sqrt(gx * gx + gy * gy + eps)
    direction = torch.round(torch.atan2(gy, gx) * (180.0 / math.pi) / 45)  # -4 .. 4
    forward = (direction % 8).long()
    backward = ((direction + 4) % 8).long()
    # centre minus each neighbour; a pixel survives if it beats both along its gradient
    diffs = torch.cat([magnitude - _neighbour(magnitude, dy, dx) for dy, dx in _DIRECTIONS], dim=1)
    is_max = torch.minimum(diffs.gather(1, forward), diffs.gather(1, backward)) > 0
    magnitude = magnitude * is_max
    strong = magnitude > high
    weak = (magnitude > low) & ~strong
    # hysteresis: weak pixels that touch a strong one (8-neighbours) become strong, repeatedly
    while True:
        grown = strong | (weak & (F.max_pool2d(strong.to(x.dtype), 3, stride=1, padding=1) > 0))
        if torch.equal(grown, strong):
            return strong.to(image.dtype)
        strong = grown


class Canny(Node):
    spec = NodeSpec(
        class_type="Canny",
        display_name="Canny",
        category="image/preprocessors",
        required=(
            InputSpec("image", "IMAGE"),
            InputSpec("low_threshold", "FLOAT", default=0.4, min=0.01, max=0.99, step=0.01),
            InputSpec("high_threshold", "FLOAT", default=0.8, min=0.01, max=0.99, step=0.01),
        ),
        outputs=(OutputSpec("IMAGE", "IMAGE"),),
        description="Edge map (white edges on black) for a canny ControlNet.",
    )

    @classmethod
    def validate_inputs(cls, ctx, low_threshold: float, high_threshold: float) -> str | None:
        if low_threshold > high_threshold:
            return f"low_threshold {low_threshold} is above high_threshold {high_threshold}; swap them"
        return None

    def run(self, rc, image: torch.Tensor, low_threshold: float, high_threshold: float):
        if image.ndim != 4:
            raise InvalidInputError(f"Canny takes an IMAGE [batch, height, width, channels], got shape "
                                    f"{tuple(image.shape)}")
        edges = canny(image[..., :3].movedim(-1, 1).to(rc.device, torch.float32), low_threshold, high_threshold)
        return (edges.repeat(1, 3, 1, 1).movedim(1, -1).cpu(),)
