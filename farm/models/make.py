"""Checkpoints with random weights in the real file formats, for tests and benchmarks.

`make_checkpoint(arch, path, seed)` writes one of ARCHES: a path ending in .safetensors
gets one file in the LDM layout ComfyUI and A1111 load; any other path becomes a diffusers
folder. Tiny arches are float32 and carry their configs in the header (see farm.models.arch);
full-size ones are float16 and carry nothing, like a user's file.

Every tensor is a pure function of (seed, component, tensor name, shape): its own random
stream, scaled so activations stay in range (norm weights near 1, small biases, weights
~ N(0, 1/fan_in)). So a full-size file is planned from meta-device models and streamed to
disk one tensor at a time (SDXL in fp32 would need 14 GB at once), and a test can rebuild
any tensor from the seed alone.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch

from farm.errors import CheckpointError
from farm.models.arch import (
    ARCHES,
    CONFIGS_METADATA_KEY,
    ArchInfo,
    TextLayout,
    arch_info,
)
from farm.models.ldm_layout import (
    LdmTensor,
    Op,
    clip_layout,
    open_clip_layout,
    unet_layout,
    vae_layout,
)
from farm.models.load import ComponentSpec, component_specs, empty_model
from farm.models.store import PICKLE_EXTENSIONS

__all__ = ["ARCHES", "make_checkpoint", "diffusers_state_dict", "component_shapes", "ldm_entries"]

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def make_checkpoint(arch: str, path: Path, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of `arch` (one of ARCHES) to `path`; returns `path`."""
    info = arch_info(arch)
    path = Path(path)
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        raise CheckpointError(f"{path.name}: farm writes .safetensors files or diffusers folders, never pickles")
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32 if arch.startswith("tiny-") else torch.float16
    if path.suffix.lower() == ".safetensors":
        _write_single_file(info, path, seed, dtype)
    else:
        _write_diffusers_folder(info, path, seed, dtype)
    return path


# --- weights ------------------------------------------------------------------------------

def component_shapes(spec: ComponentSpec) -> dict[str, tuple[int, ...]]:
    """diffusers state-dict name -> shape, from a meta-device model (costs no memory)."""
    return {k: tuple(v.shape) for k, v in empty_model(spec).state_dict().items()}


def random_tensor(seed: int, component: str, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """float32 weights for one tensor; see the module docstring."""
    stream = (seed * 1_000_003 + zlib.crc32(f"{component}/{key}".encode())) % 2**63
    x = torch.randn(shape, generator=torch.Generator().manual_seed(stream))
    if len(shape) == 1:
        return 1.0 + 0.1 * x if key.endswith("weight") else 0.05 * x  # norm scales / biases
    if "token_embedding" in key or "position_embedding" in key:
        return 0.02 * x  # CLIP's init scale
    return x / math.sqrt(math.prod(shape[1:]))


def diffusers_state_dict(arch: str, component: str, seed: int = 0,
                         dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The diffusers-layout weights `make_checkpoint(arch, ..., seed)` writes for `component`
    (unet, vae, text_encoder, text_encoder_2), in the file's dtype unless `dtype` is given."""
    spec = next(s for s in component_specs(arch_info(arch)) if s.folder == component)
    dtype = dtype or (torch.float32 if arch.startswith("tiny-") else torch.float16)
    return {k: random_tensor(seed, component, k, shape).to(dtype) for k, shape in component_shapes(spec).items()}


def ldm_entries(spec: ComponentSpec, keys: Iterable[str]) -> list[LdmTensor]:
    """How the component's diffusers tensors (`keys`) are laid out in an LDM single file."""
    if spec.folder == "unet":
        return unet_layout(keys, spec.config)
    if spec.folder == "vae":
        return vae_layout(keys, spec.config)
    if spec.text.layout is TextLayout.OPEN_CLIP:
        return open_clip_layout(keys, spec.text.ldm_prefix)
    return clip_layout(keys, spec.text.ldm_prefix)


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of a file being written: its name, shape and how to make it."""

    key: str
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]


def _planned(seed: int, spec: ComponentSpec, shapes: Mapping[str, tuple[int, ...]],
             entry: LdmTensor, dtype: torch.dtype) -> PlannedTensor:
    def make() -> torch.Tensor:
        sources = {s: random_tensor(seed, spec.folder, s, shapes[s]) for s in entry.sources}
        return entry.build(sources).to(dtype)

    return PlannedTensor(entry.key, entry.shape(shapes), make)


# --- writers ----------------------------------------------------------------------------------

def _write_single_file(info: ArchInfo, path: Path, seed: int, dtype: torch.dtype) -> None:
    planned: list[PlannedTensor] = []
    for spec in component_specs(info):
        shapes = component_shapes(spec)
        planned += [_planned(seed, spec, shapes, entry, dtype) for entry in ldm_entries(spec, shapes)]
    metadata = {CONFIGS_METADATA_KEY: info.configs.to_json(info.name)} if info.name.startswith("tiny-") else None
    write_safetensors(path, planned, dtype, metadata)


def _write_diffusers_folder(info: ArchInfo, path: Path, seed: int, dtype: torch.dtype) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{path} already exists; remove it or choose a new folder")
    staging = path.with_name(f".{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    index: dict[str, object] = {"_class_name": info.arch.spec.pipeline_class, "_diffusers_version": "0.42.1",
                                "_renderfarm_arch": info.name}
    for spec in component_specs(info):
        folder = staging / spec.folder
        folder.mkdir()
        model = empty_model(spec)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if spec.text is None:
            model.save_config(folder)
            weights, library = "diffusion_pytorch_model.safetensors", "diffusers"
            names = {k: k for k in shapes}
        else:
            model.config.save_pretrained(folder)
            weights, library = "model.safetensors", "transformers"
            # the hub's names (text_model.*), which every transformers version reads
            names = {k: k if k.startswith(("text_model.", "text_projection")) else "text_model." + k for k in shapes}
        planned = [_planned(seed, spec, shapes, LdmTensor(names[k], (k,), Op.COPY), dtype) for k in shapes]
        write_safetensors(folder / weights, planned, dtype, {"format": "pt"})
        index[spec.folder] = [library, type(model).__name__]
    for spec in info.text_encoders:
        _write_tokenizer(staging / spec.tokenizer_dir, spec.pad_token)
        index[spec.tokenizer_dir] = ["transformers", "CLIPTokenizer"]
    _write_scheduler(staging / "scheduler")
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    if info.text_encoders[0].name == "clip_l" and len(info.text_encoders) == 1:  # SD1's pipeline
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (staging / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    if path.exists():
        path.rmdir()  # empty, checked above
    os.replace(staging, path)


def _write_tokenizer(folder: Path, pad_token: str) -> None:
    """The files of a hub SD tokenizer folder: CLIP's BPE plus the special tokens."""
    folder.mkdir()
    shipped = files("farm.models").joinpath("tokenizer")
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes(shipped.joinpath(name).read_bytes())
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _write_scheduler(folder: Path) -> None:
    from diffusers import EulerDiscreteScheduler

    # the noise schedule SD1.x and SDXL were trained with (LDM's linear_start/linear_end)
    EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                           beta_schedule="scaled_linear", prediction_type="epsilon",
                           timestep_spacing="leading", steps_offset=1).save_config(folder)


def write_safetensors(path: Path, tensors: list[PlannedTensor], dtype: torch.dtype,
                      metadata: Mapping[str, str] | None = None) -> None:
    """A safetensors file written one tensor at a time: the header (names, dtypes, shapes,
    byte offsets) first, then each tensor as it is made. Written beside `path`, then renamed,
    so a half-written file is never seen under the real name."""
    code = _SAFETENSORS_DTYPES[dtype]
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for t in tensors:
        size = math.prod(t.shape) * itemsize
        header[t.key] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            value = t.make()
            if tuple(value.shape) != t.shape or value.dtype != dtype:
                raise AssertionError(f"{t.key}: made {tuple(value.shape)} {value.dtype}, planned {t.shape} {dtype}")
            f.write(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too (alpha)
    os.replace(partial, path)
