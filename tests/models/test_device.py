"""Device and dtype choice, with their environment overrides."""
from __future__ import annotations

import pytest
import torch

from farm.errors import FarmError
from farm.models.arch import Arch
from farm.models.device import choose_device, choose_dtype, choose_vae_dtype

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def test_device_defaults_to_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device({}).type == expected
    assert choose_device({"FARM_DEVICE": "cpu"}) == CPU
    with pytest.raises(FarmError, match="FARM_DEVICE"):
        choose_device({"FARM_DEVICE": "toaster"})


def test_dtype_is_half_on_gpu_float32_on_cpu_unless_overridden():
    assert choose_dtype(CUDA, {}) == torch.float16
    assert choose_dtype(CPU, {}) == torch.float32
    assert choose_dtype(CUDA, {"FARM_DTYPE": "bf16"}) == torch.bfloat16
    assert choose_dtype(CUDA, {"FARM_DTYPE": "FP32"}) == torch.float32
    assert choose_dtype(CPU, {"FARM_DTYPE": "fp16"}) == torch.float16
    with pytest.raises(FarmError, match="FARM_DTYPE"):
        choose_dtype(CPU, {"FARM_DTYPE": "int8"})


def test_environment_is_read_when_no_mapping_is_given(monkeypatch):
    monkeypatch.setenv("FARM_DTYPE", "bf16")
    assert choose_dtype(CPU) == torch.bfloat16


def test_vae_dtype_keeps_sdxl_out_of_float16():
    assert choose_vae_dtype(Arch.SDXL, CPU, torch.bfloat16) == torch.float32
    assert choose_vae_dtype(Arch.SD15, CUDA, torch.float16) == torch.float16
    assert choose_vae_dtype(Arch.SDXL, CUDA, torch.float16) in (torch.bfloat16, torch.float32)
    assert choose_vae_dtype(Arch.SDXL, CUDA, torch.bfloat16) == torch.bfloat16
    assert choose_vae_dtype(Arch.SDXL, CUDA, torch.float32) == torch.float32
