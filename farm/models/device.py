"""Device and dtype choice: CUDA when present, half precision on the GPU, float32 on the CPU.

FARM_DEVICE (cpu, cuda, cuda:1, ...) and FARM_DTYPE (bf16, fp16, fp32) override the defaults.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from farm.errors import FarmError
from farm.models.arch import Arch

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def choose_device(env: Mapping[str, str] | None = None) -> torch.device:
    env = os.environ if env is None else env
    name = env.get("FARM_DEVICE", "").strip()
    if name:
        try:
            return torch.device(name)
        except RuntimeError as exc:
            raise FarmError(f"FARM_DEVICE={name!r} is not a device; use cpu, cuda or cuda:N") from exc
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_dtype(device: torch.device, env: Mapping[str, str] | None = None) -> torch.dtype:
    env = os.environ if env is None else env
    name = env.get("FARM_DTYPE", "").strip().lower()
    if name:
        if name not in DTYPES:
            raise FarmError(f"FARM_DTYPE={name!r} is not one of {', '.join(DTYPES)}")
        return DTYPES[name]
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def choose_vae_dtype(arch: Arch, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The VAE's dtype beside models in `dtype`.

    On the CPU the VAE stays float32 (half precision there is slow and gains nothing).
    SDXL's VAE overflows in float16 (NaN, black images; diffusers marks it force_upcast):
    it runs in bfloat16, which has float32's range, where the GPU supports it, else in
    float32. SD1.x's VAE is fine in float16.
    """
    if torch.device(device).type != "cuda":
        return torch.float32
    if arch in (Arch.SDXL, Arch.SDXL_REFINER) and dtype == torch.float16:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return dtype
