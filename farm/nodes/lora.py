"""LoraLoader and LoraLoaderModelOnly: a LoRA from models/loras on MODEL (and CLIP).

The outputs are the inputs plus a binding (which layers, which deltas, what strength);
the weights change only while a sampler or a text encode runs (see farm.models.lora), so
the cached base outputs of CheckpointLoaderSimple never see a LoRA, and the cache key of
a LoRA output is its own signature: lora_name and both strengths are constant inputs.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import PurePosixPath

from farm.models.lora import BoundLora, LoraError, LoraFile, bind, patched, read_lora
from farm.models.lora_keys import (
    TE1_ROOT,
    TE2_ROOT,
    UNET_ROOT,
    clip_key_maps,
    unet_key_map,
)
from farm.models.store import PICKLE_EXTENSIONS
from farm.nodes.spec import InputSpec, Node, NodeContext, NodeSpec, OutputSpec
from farm.nodes.values import DiffusionModel
from farm.text.conditioning import Conditioning
from farm.text.encode import ClipTextEncoder

log = logging.getLogger(__name__)


def lora_names(ctx: NodeContext) -> list[str]:
    return ctx.models.names("loras")


@dataclass(frozen=True, eq=False)
class PatchedClip:
    """CLIP with LoRAs: encodes through the base encoder with the LoRAs applied meanwhile."""

    base: ClipTextEncoder
    loras: tuple[BoundLora, ...]

    def roots(self) -> dict:
        return clip_roots(self.base)

    def encode(self, text: str, check=None) -> Conditioning:
        with patched(self.roots(), self.loras):
            return self.base.encode(text, check)

    def with_last_layer(self, layer: int) -> "PatchedClip":
        return PatchedClip(self.base.with_last_layer(layer), self.loras)

    def __getattr__(self, name: str):
        if name in ("base", "loras"):  # not set yet (copy, unpickle): no recursion into base
            raise AttributeError(name)
        return getattr(self.base, name)  # arch, tokenizer ...: the base's


def clip_roots(clip: ClipTextEncoder) -> dict:
    roots = {TE1_ROOT: clip.text_model}
    if clip.text_model_g is not None:
        roots[TE2_ROOT] = clip.text_model_g
    return roots


def with_clip_lora(clip, lora: BoundLora) -> PatchedClip:
    if isinstance(clip, PatchedClip):
        return PatchedClip(clip.base, clip.loras + (lora,))
    return PatchedClip(clip, (lora,))


class _LoraFiles:
    """The last few LoRA files read, by path and modification stamp: a strength sweep over
    one LoRA reads it once."""

    def __init__(self, max_files: int = 4):
        self.max_files = max_files
        self._files: OrderedDict[tuple, LoraFile] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ctx: NodeContext, name: str) -> LoraFile:
        path = ctx.models.resolve("loras", name)
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        lora = read_lora(path, name)
        with self._lock:
            self._files[key] = lora
            while len(self._files) > self.max_files:
                self._files.popitem(last=False)
        return lora


LORA_FILES = _LoraFiles()


def _strength(name: str) -> InputSpec:
    return InputSpec(name, "FLOAT", default=1.0, min=-100.0, max=100.0, step=0.01,
                     tooltip="How strongly to apply the LoRA; negative inverts it.")


_LORA_NAME = InputSpec("lora_name", "COMBO", choices=lora_names, tooltip="LoRA file in models/loras.")


def _refuse_pickle(lora_name: str) -> str | None:
    suffix = PurePosixPath(lora_name).suffix.lower()
    if suffix in PICKLE_EXTENSIONS:
        return (f"{lora_name} is a pickle file ({suffix}); loading it could run arbitrary code, so the farm "
                "only loads safetensors. Convert it to .safetensors and pick the converted file.")
    return None


def _stamp(ctx: NodeContext, lora_name: str) -> str:
    # size and mtime, not a hash: a replaced file is a new signature without reading it
    stat = ctx.models.resolve("loras", lora_name).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def bind_model(model: DiffusionModel, lora: LoraFile, strength: float) -> tuple[DiffusionModel, set[str]]:
    bound, used = bind(lora, strength, {UNET_ROOT: unet_key_map(model.unet)}, {UNET_ROOT: model.unet})
    return dataclasses.replace(model, loras=model.loras + (bound,)), used


def bind_clip(clip, lora: LoraFile, strength: float) -> tuple[PatchedClip, set[str]]:
    base = clip.base if isinstance(clip, PatchedClip) else clip
    roots = clip_roots(base)
    bound, used = bind(lora, strength, clip_key_maps(tuple(roots.values())), roots)
    return with_clip_lora(clip, bound), used


def _check_used(lora: LoraFile, used: set[str], what: str) -> None:
    if not used:
        raise LoraError(f"{lora.name} matches no layer of this checkpoint's {what}; it was made for another "
                        "base model (SD1.5 vs SDXL?) or uses key names farm does not know")
    left = len(lora.layers) - len(used)
    if left:
        log.warning("%s: %d of its %d layers match nothing here and are skipped", lora.name, left, len(lora.layers))


class _LoraNode(Node):
    """What both LoRA loaders check before running: a pickle file is refused by name, and
    the file's size and time join the cache key (a replaced file is not served stale)."""

    model_files = {"lora_name": "loras"}

    @classmethod
    def validate_inputs(cls, ctx: NodeContext, lora_name: str) -> str | None:
        return _refuse_pickle(lora_name)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, lora_name: str) -> str | None:
        return _stamp(ctx, lora_name)


class LoraLoader(_LoraNode):
    spec = NodeSpec(
        class_type="LoraLoader",
        display_name="Load LoRA",
        category="loaders",
        required=(
            InputSpec("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
            InputSpec("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
            _LORA_NAME, _strength("strength_model"), _strength("strength_clip"),
        ),
        outputs=(OutputSpec("MODEL", "MODEL"), OutputSpec("CLIP", "CLIP")),
        description="Applies a LoRA to the diffusion model and the text encoder.",
    )

    def run(self, rc, model, clip, lora_name: str, strength_model: float, strength_clip: float):
        if strength_model == 0 and strength_clip == 0:
            return model, clip
        lora = LORA_FILES.get(rc.node_ctx, lora_name)
        patched_model, used_unet = bind_model(model, lora, strength_model)
        patched_clip, used_clip = bind_clip(clip, lora, strength_clip)
        _check_used(lora, used_unet | used_clip, "UNet or text encoder")
        return patched_model, patched_clip


class LoraLoaderModelOnly(_LoraNode):
    spec = NodeSpec(
        class_type="LoraLoaderModelOnly",
        display_name="LoraLoaderModelOnly",
        category="loaders",
        required=(InputSpec("model", "MODEL"), _LORA_NAME,
                  InputSpec("strength_model", "FLOAT", default=1.0, min=-100.0, max=100.0, step=0.01)),
        outputs=(OutputSpec("MODEL", "MODEL"),),
        description="Applies a LoRA to the diffusion model only.",
    )

    def run(self, rc, model, lora_name: str, strength_model: float):
        if strength_model == 0:
            return (model,)
        lora = LORA_FILES.get(rc.node_ctx, lora_name)
        patched_model, used = bind_model(model, lora, strength_model)
        _check_used(lora, used, "UNet")
        return (patched_model,)
