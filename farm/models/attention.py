"""Which attention kernels the UNet and VAE use: PyTorch SDPA unless xformers is asked for
and actually works.

xformers is only used when it is installed, asked for (FARM_ATTENTION=xformers or the
`requested` argument) and passes a small probe on the target device: a wheel built for
another torch imports fine but its kernels fail at the first call (seen with xformers
0.0.35 beside torch 2.11), so importing proves nothing. Any failure logs one warning and
falls back to SDPA.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor

from farm.errors import FarmError

log = logging.getLogger(__name__)

SDPA = "sdpa"
XFORMERS = "xformers"
BACKENDS = (SDPA, XFORMERS)
ENV_VAR = "FARM_ATTENTION"


def requested_backend(requested: str | None, env: Mapping[str, str] | None = None) -> str:
    """The argument if given, else FARM_ATTENTION, else SDPA."""
    env = os.environ if env is None else env
    name = (requested or env.get(ENV_VAR) or SDPA).strip().lower()
    if name not in BACKENDS:
        raise FarmError(f"unknown attention backend {name!r}; use one of {', '.join(BACKENDS)} "
                        f"(argument or {ENV_VAR})")
    return name


def xformers_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when xformers runs one small attention on `device` and agrees with SDPA; else why not."""
    try:
        import xformers.ops
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return f"it cannot be imported ({type(exc).__name__}: {exc})"
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(1, 16, 2, 40, generator=gen).to(device, dtype) for _ in range(3))  # [B, M, H, K]
        out = xformers.ops.memory_efficient_attention(q, k, v)
        ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        tolerance = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
        if not torch.allclose(out.float(), ref.float(), atol=tolerance, rtol=tolerance):
            return "its result differs from PyTorch's attention"
    except Exception as exc:  # kernels missing for this torch/GPU: any exception type
        return f"its kernels do not run here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def apply_attention_backend(unet: torch.nn.Module, vae: torch.nn.Module | None,
                            requested: str | None = None) -> str:
    """Set the attention processor of every attention layer of `unet` (and `vae`); returns
    the backend in use. Call after the models are on their device and dtype."""
    wanted = requested_backend(requested)
    param = next(unet.parameters())
    if wanted == XFORMERS:
        problem = xformers_problem(param.device, param.dtype)
        if problem is None:
            for model in (unet, vae):
                if model is not None:
                    model.set_attn_processor(XFormersAttnProcessor())
            return XFORMERS
        log.warning("xformers attention was requested but %s; using PyTorch SDPA instead", problem)
    for model in (unet, vae):
        if model is not None:
            model.set_attn_processor(AttnProcessor2_0())
    return SDPA
