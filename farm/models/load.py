"""Load a checkpoint from disk, offline: an LDM single file (.safetensors) or a diffusers folder.

Only safetensors is ever opened. A pickle file (.ckpt .pt .pth .bin .pkl), or a diffusers
folder whose weights are only pickles, is refused before anything is read: unpickling a
downloaded file runs arbitrary code. Single files are converted with diffusers' own
LDM -> diffusers converters into models built from configs (farm.models.arch says which).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from farm.errors import (
    CheckpointError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
)
from farm.models.arch import (
    UNET_PREFIX,
    VAE_PREFIX,
    Arch,
    ArchConfigs,
    ArchInfo,
    TextEncoderSpec,
    TextLayout,
    detect_arch,
    detect_family,
)
from farm.models.attention import apply_attention_backend
from farm.models.device import choose_vae_dtype
from farm.models.store import PICKLE_EXTENSIONS, SAFE_EXTENSIONS

TOKENIZER_MAX_LENGTH = 77
_PICKLE_ADVICE = ("pickle files can run arbitrary code when loaded, so farm only reads safetensors; "
                  "convert it once on a trusted machine (e.g. load it and save it with safetensors.torch.save_file, "
                  "or use a .safetensors release of the same model)")


@dataclass(frozen=True)
class ComponentSpec:
    folder: str  # the diffusers sub-folder: unet, vae, text_encoder, text_encoder_2
    config: Mapping[str, Any]
    text: TextEncoderSpec | None = None


def component_specs(info: ArchInfo) -> tuple[ComponentSpec, ...]:
    texts = tuple(ComponentSpec(spec.config_file, config, spec)
                  for spec, config in zip(info.text_encoders, info.configs.text_encoders))
    return (ComponentSpec("unet", info.configs.unet), ComponentSpec("vae", info.configs.vae), *texts)


def empty_model(spec: ComponentSpec) -> torch.nn.Module:
    """The component's model with its parameters on the meta device: no memory, no init
    time (a full-size SDXL UNet would take 10 GB and tens of seconds to initialise)."""
    with torch.device("meta"):
        if spec.folder == "unet":
            return UNet2DConditionModel.from_config(dict(spec.config))
        if spec.folder == "vae":
            return AutoencoderKL.from_config(dict(spec.config))
        model_class = CLIPTextModelWithProjection if spec.text and spec.text.with_projection else CLIPTextModel
        return model_class(CLIPTextConfig.from_dict(dict(spec.config)))


def fill_model(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Load `state_dict` into a meta-built model, strictly: every parameter must come from
    the file and nothing may be left over."""
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the {what} weights do not fit the expected architecture: {_short(exc)}") from exc
    for name, buffer in list(model.named_buffers()):
        # CLIP's position_ids is the one non-persistent buffer of these models: never in a file
        if buffer.is_meta and name.endswith("position_ids"):
            owner = model.get_submodule(name.rpartition(".")[0])
            owner.register_buffer("position_ids", torch.arange(buffer.shape[-1]).expand(buffer.shape),
                                  persistent=False)
        elif buffer.is_meta:
            raise CheckpointError(f"the {what} has a buffer {name!r} that no file provides")
    return model


def _short(exc: BaseException, limit: int = 600) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def load_tokenizer(spec: TextEncoderSpec, folder: Path | None = None) -> CLIPTokenizer:
    """The diffusers folder's own tokenizer if it has one, else the CLIP BPE farm ships."""
    if folder is not None and (folder / spec.tokenizer_dir).is_dir():
        tok = CLIPTokenizer.from_pretrained(folder / spec.tokenizer_dir, local_files_only=True)
    else:
        shipped = files("farm.models").joinpath("tokenizer")
        tok = CLIPTokenizer(str(shipped.joinpath("vocab.json")), str(shipped.joinpath("merges.txt")),
                            pad_token=spec.pad_token)
    tok.model_max_length = TOKENIZER_MAX_LENGTH
    return tok


@dataclass(eq=False)
class LoadedCheckpoint:
    arch: ArchInfo
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: tuple[torch.nn.Module, ...]  # clip_l (CLIPTextModel) [, clip_g (CLIPTextModelWithProjection)]
    tokenizers: tuple[CLIPTokenizer, ...]  # one per text encoder, same order
    latent_scale_factor: float  # VAE latent * this = the UNet's latent
    source: Path
    size_bytes: int  # on disk
    device: torch.device
    dtype: torch.dtype  # of the UNet and text encoders; the VAE's is vae.dtype
    attention: str  # the attention backend in use: "sdpa" or "xformers"


def load_checkpoint(path: Path, device: torch.device, dtype: torch.dtype,
                    attention: str | None = None) -> LoadedCheckpoint:
    """Load a single-file checkpoint or a diffusers folder onto `device`: UNet and text
    encoders in `dtype`, the VAE in farm.models.device.choose_vae_dtype's choice; all in
    eval mode without gradients. `attention` as in farm.models.attention."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    if path.is_file() and path.suffix.lower() in PICKLE_EXTENSIONS:
        raise UnsafeCheckpointError(f"{path.name} is a pickle checkpoint ({path.suffix}); {_PICKLE_ADVICE}")
    if path.is_dir():
        info, models, tokenizers = _read_diffusers_folder(path, device, dtype)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    elif path.suffix.lower() in SAFE_EXTENSIONS:
        info, models = _read_single_file(path)
        tokenizers = tuple(load_tokenizer(spec) for spec in info.text_encoders)
        size = path.stat().st_size
    else:
        raise CheckpointError(f"{path.name}: farm reads .safetensors files and diffusers folders "
                              f"(with model_index.json), not {path.suffix or 'extension-less'} files")

    vae_dtype = choose_vae_dtype(info.arch, device, dtype)
    for name, model in models.items():
        # nn.Module.to, not diffusers' override: that one warns about fp32-pinned modules on
        # every dtype cast even when (as for these models) there are none
        torch.nn.Module.to(model, device=device, dtype=vae_dtype if name == "vae" else dtype)
        model.eval().requires_grad_(False)
    backend = apply_attention_backend(models["unet"], models["vae"], attention)
    texts = tuple(models[spec.config_file] for spec in info.text_encoders)
    return LoadedCheckpoint(info, models["unet"], models["vae"], texts, tokenizers, info.latent_scale_factor,
                            path, size, device, dtype, backend)


# --- single file --------------------------------------------------------------------------

def _read_single_file(path: Path) -> tuple[ArchInfo, dict[str, torch.nn.Module]]:
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on a bad file
        raise CheckpointError(f"{path.name} is not a readable safetensors file: {_short(exc)}") from exc
    with handle as f:
        keys = list(f.keys())
        probe = UNET_PREFIX + "input_blocks.0.0.weight"
        shapes = {probe: tuple(f.get_slice(probe).get_shape())} if probe in keys else {}
        info = detect_arch(keys, f.metadata(), shapes)
        models: dict[str, torch.nn.Module] = {}
        # one component at a time, so peak memory is one component's tensors plus its model
        for spec in component_specs(info):
            prefix = _ldm_prefix(spec)
            tensors = {k: f.get_tensor(k) for k in keys if k.startswith(prefix)}
            model = empty_model(spec)
            models[spec.folder] = fill_model(model, _to_diffusers(spec, model, tensors), spec.folder)
    return info, models


def _ldm_prefix(spec: ComponentSpec) -> str:
    if spec.text is not None:
        return spec.text.ldm_prefix
    return UNET_PREFIX if spec.folder == "unet" else VAE_PREFIX


def _to_diffusers(spec: ComponentSpec, model: torch.nn.Module,
                  tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' converters do the renaming; what is farm's is which one applies and the
    naming of the transformers version installed (CLIPTextModel lost its text_model. level
    in transformers 5)."""
    try:
        if spec.folder == "unet":
            return convert_ldm_unet_checkpoint(tensors, dict(spec.config))
        if spec.folder == "vae":
            return convert_ldm_vae_checkpoint(tensors, dict(spec.config))
        if spec.text.layout is TextLayout.OPEN_CLIP:
            converted = convert_open_clip_checkpoint(model, tensors, prefix=spec.text.ldm_prefix)
        else:
            converted = convert_ldm_clip_checkpoint(tensors, remove_prefix=spec.text.ldm_prefix)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"the {spec.folder} tensors are not in the expected LDM layout: "
                              f"{type(exc).__name__}: {_short(exc)}") from exc
    wrapped = hasattr(model, "text_model")
    out = {}
    for key, value in converted.items():
        if key.endswith("position_ids"):
            continue  # a buffer older transformers saved; rebuilt from the config
        bare = key.removeprefix("text_model.")
        top_level = bare.startswith("text_projection")
        out[key if top_level else ("text_model." + bare if wrapped else bare)] = value
    return out


# --- diffusers folder ------------------------------------------------------------------------

def _read_diffusers_folder(path: Path, device: torch.device, dtype: torch.dtype,
                           ) -> tuple[ArchInfo, dict[str, torch.nn.Module], tuple[CLIPTokenizer, ...]]:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise CheckpointError(f"{path.name} is a folder without model_index.json: not a diffusers model")
    try:
        index = json.loads(index_file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{index_file} is not valid JSON: {exc}") from exc
    arch = _folder_family(path, index)
    folders = ("unet", "vae", *(spec.config_file for spec in arch.text_encoders))
    variants = {name: _weights_variant(path / name) for name in folders}
    configs = {name: _read_json(path / name / "config.json") for name in folders}
    info = ArchInfo(arch, str(index.get("_renderfarm_arch", arch.value)),
                    ArchConfigs(configs["unet"], configs["vae"],
                                tuple(configs[spec.config_file] for spec in arch.text_encoders)))
    if info.configs.unet.get("in_channels", 4) != 4:
        raise UnsupportedCheckpointError(f"{path.name}: a UNet with {info.configs.unet['in_channels']} input "
                                         "channels (inpainting?); farm runs text-to-image models")
    common = dict(local_files_only=True, use_safetensors=True)
    # low_cpu_mem_usage needs accelerate, which farm does not depend on; saying so keeps
    # diffusers from warning on every load (it skips weight init either way)
    # (the final dtypes already here: diffusers would otherwise build float32 models first)
    vae_dtype = choose_vae_dtype(arch, device, dtype)
    models: dict[str, torch.nn.Module] = {
        name: model_class.from_pretrained(path, subfolder=name, variant=variants[name], low_cpu_mem_usage=False,
                                          torch_dtype=model_dtype, **common)
        for name, model_class, model_dtype in (("unet", UNet2DConditionModel, dtype),
                                               ("vae", AutoencoderKL, vae_dtype))
    }
    for spec in arch.text_encoders:
        model_class = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
        models[spec.config_file] = model_class.from_pretrained(path / spec.config_file, dtype=dtype,
                                                               variant=variants[spec.config_file], **common)
    tokenizers = tuple(load_tokenizer(spec, path) for spec in arch.text_encoders)
    return info, models, tokenizers


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{file} is missing: the diffusers folder is incomplete") from exc
    except ValueError as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from exc


def _folder_family(path: Path, index: Mapping[str, Any]) -> Arch:
    def present(name: str) -> bool:
        entry = index.get(name)
        return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None

    what = index.get("_class_name", "an unknown pipeline")
    if not present("unet"):
        raise UnsupportedCheckpointError(f"{path.name} is {what} without a UNet; farm runs SD1.x and SDXL")
    if present("text_encoder") and present("text_encoder_2"):
        return Arch.SDXL
    if present("text_encoder_2"):
        return Arch.SDXL_REFINER  # OpenCLIP bigG alone
    if not present("text_encoder"):
        raise UnsupportedCheckpointError(f"{path.name} ({what}) has no text encoder; farm runs SD1.x and SDXL")
    text_config = _read_json(path / "text_encoder" / "config.json")
    if text_config.get("hidden_act") != "quick_gelu":  # OpenAI CLIP-L (SD1) vs OpenCLIP-H (SD2)
        raise UnsupportedCheckpointError(f"{path.name} looks like Stable Diffusion 2.x (its text encoder is not "
                                         "OpenAI CLIP ViT-L); farm runs SD1.x and SDXL")
    return Arch.SD15


def _weights_variant(folder: Path) -> str | None:
    """None for plain *.safetensors weights, "fp16" when only that variant is there; a
    folder with only pickle weights is refused before any of them is opened."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is missing: the diffusers folder is incomplete")
    names = [p.name for p in folder.iterdir() if p.is_file()]
    safe = [n for n in names if n.endswith(".safetensors")]
    if any(n.count(".") == 1 for n in safe):  # model.safetensors, diffusion_pytorch_model.safetensors
        return None
    if any(n.endswith(".fp16.safetensors") for n in safe):
        return "fp16"
    if safe:
        return None
    if any(Path(n).suffix.lower() in PICKLE_EXTENSIONS for n in names):
        raise UnsafeCheckpointError(f"{folder} holds only pickle weights (.bin); {_PICKLE_ADVICE}")
    raise CheckpointError(f"{folder} has no .safetensors weights")


def checkpoint_family(path: Path) -> str:
    """'sd15' or 'sdxl' from a checkpoint's tensor names or its folder's model_index.json,
    reading no weights (the batch sizer budgets memory by family); '' when it cannot tell.
    Cached by path, size and modification time: a submission reads the header once."""
    try:
        stat = path.stat()
        return _family_of(str(path), stat.st_size, stat.st_mtime_ns)
    except (OSError, CheckpointError):
        return ""


@functools.lru_cache(maxsize=256)
def _family_of(path: str, _size: int, _mtime_ns: int) -> str:
    folder = Path(path)
    if folder.is_dir():
        return _folder_family(folder, _read_json(folder / "model_index.json")).value
    if folder.suffix.lower() not in SAFE_EXTENSIONS:
        return ""  # never opened: only safetensors is read
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return detect_family(f.keys()).value
    except Exception:  # a foreign or damaged file: its loader names the fault, sizing only guesses
        return ""
