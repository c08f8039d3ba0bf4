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
from diffusers.models.attention_processor import (Attention, AttnProcessor2_0, FusedAttnProcessor2_0,
                                                  XFormersAttnProcessor)

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


def fuse_qkv(unet: torch.nn.Module) -> int:
    """Fuse each attention layer's input projections into one matrix multiply: self-attention's
    q, k and v into `to_qkv`, cross-attention's k and v (both read the prompt) into `to_kv`.
    The maths is unchanged: the fused weight is the parts stacked, each output column the
    same dot product (only rounding may differ, as between any two GEMM kernels); one larger
    GEMM instead of three smaller ones is what is faster. Returns
    the layers fused, 0 when the layers are not all on SDPA (xformers' processor has no fused
    form) or already fused.

    The parts stay, as views into the fused weight: the model keeps its state-dict names, so
    copying a checkpoint's `to_q`/`to_k`/`to_v` weights into it by name (a compiled stage
    fed a checkpoint, with its LoRA patched in) writes the fused weight, with no second copy
    of the projections in memory."""
    layers = [m for m in unet.modules() if isinstance(m, Attention)]
    if not layers or not all(type(m.processor) is AttnProcessor2_0 for m in layers):
        return 0
    with torch.no_grad():
        for attn in layers:
            attn.fuse_projections()
            fused, parts = ((attn.to_kv, (attn.to_k, attn.to_v)) if attn.is_cross_attention
                            else (attn.to_qkv, (attn.to_q, attn.to_k, attn.to_v)))
            start = 0
            for part in parts:  # stacked in this order by fuse_projections
                rows = part.weight.shape[0]
                part.weight = torch.nn.Parameter(fused.weight.data[start:start + rows], requires_grad=False)
                if part.bias is not None:
                    part.bias = torch.nn.Parameter(fused.bias.data[start:start + rows], requires_grad=False)
                start += rows
            fused.requires_grad_(False)
            attn.set_processor(FusedAttnProcessor2_0())
    return len(layers)
