"""The centre crop ComfyUI's upscales use (common_upscale with crop="center"): shared by the
resize nodes and the ControlNet hint, which is prepared the same way."""
from __future__ import annotations

import torch


def center_crop_to_aspect(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Trim x [B,C,H,W] symmetrically so that its aspect ratio is width:height."""
    old_h, old_w = x.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    dx = dy = 0
    if old_aspect > new_aspect:
        dx = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        dy = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return x[..., dy:old_h - dy, dx:old_w - dx]
