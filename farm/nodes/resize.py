"""Resizing latents and images the way ComfyUI's upscale nodes do: optional centre crop to
the new aspect ratio, then one of torch's interpolations, Lanczos through Pillow, or
"bislerp" (bilinear, but spherical between the latent vectors of neighbouring pixels)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from farm.sampling.crop import center_crop_to_aspect


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of the directions of a and b [N, C], linear of their lengths."""
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    dot = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    direction = torch.where(so.abs() < 1e-6, ua * (1 - t) + ub * t,  # (anti)parallel: no arc to follow
                            (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / so.clamp_min(1e-12))
    return direction * (na * (1 - t) + nb * t)


def _bislerp_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Resample one spatial axis of x [B,C,H,W] with half-pixel centres, as bilinear does."""
    length = x.shape[dim]
    pos = ((torch.arange(size, dtype=torch.float32) + 0.5) * length / size - 0.5).clamp(0, length - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=length - 1)
    t = (pos - lo).reshape(-1, 1)
    moved = x.movedim(dim, -1).movedim(1, -1)  # [..., L, C]: channel vectors last
    a, b = moved[..., lo, :], moved[..., hi, :]
    shape = a.shape
    out = _slerp(a.reshape(-1, shape[-1]), b.reshape(-1, shape[-1]),
                 t.expand(*shape[:-1]).reshape(-1, 1)).reshape(shape)
    return out.movedim(-1, 1).movedim(-1, dim)


def bislerp(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return _bislerp_axis(_bislerp_axis(x.float(), width, 3), height, 2).to(x.dtype)


def lanczos(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    images = []
    for img in x.clamp(0, 1).movedim(1, -1).cpu().numpy():
        pil = Image.fromarray((img * 255).round().astype(np.uint8).squeeze())
        out = np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
        images.append(torch.from_numpy(out).reshape(height, width, -1))
    return torch.stack(images).movedim(-1, 1).to(x.device, x.dtype)


def upscale(x: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """x [B,C,H,W] -> [B,C,height,width]."""
    if crop == "center":
        x = center_crop_to_aspect(x, width, height)
    if method == "bislerp":
        return bislerp(x, width, height)
    if method == "lanczos":
        return lanczos(x, width, height)
    return F.interpolate(x, size=(height, width), mode=method)


def keep_aspect(width: int, height: int, old_w: int, old_h: int, minimum: int) -> tuple[int, int]:
    """ComfyUI's rule for a 0 width or height: derive it from the other side's ratio."""
    if width == 0:
        width = max(minimum, round(old_w * height / old_h))
    elif height == 0:
        height = max(minimum, round(old_h * width / old_w))
    return width, height
