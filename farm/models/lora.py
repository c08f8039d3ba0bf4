"""LoRA files and how their low-rank deltas land on a resident model, in place.

A LoRA file holds, per layer, `up` [out, r(, kh, kw)], `down` [r, in(, kh, kw)] and an
optional `alpha`; the layer's weight becomes W + strength * (alpha / r) * up @ down, as
ComfyUI and A1111 compute it (no alpha: scale 1, the PEFT convention). Two key layouts
are read (see farm.models.lora_keys for the names): kohya/A1111 (`lora_unet_...`,
`lora_te_...`, `.lora_down/.lora_up/.alpha`) and diffusers/PEFT (`unet.<module>`,
`text_encoder.<module>`, `.lora_A/.lora_B`).

Patching never copies the base model: `patched(roots, loras)` saves only the weights a
LoRA touches, adds the deltas into them, and on exit copies the saved weights back, so the
base is bit-identical afterwards and the next job (another LoRA, or none) starts from it.
Several LoRAs on one weight are summed in float32 and rounded once, as ComfyUI does.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from farm.errors import CheckpointError
from farm.models.compiled_stage import weights_changed
from farm.models.store import SAFE_EXTENSIONS


class LoraError(CheckpointError):
    """A LoRA file that cannot be read or does not fit the model it is applied to."""


# File suffix -> the part it holds. Order matters: the longest suffixes are tried first.
_PARTS = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".alpha", "alpha"),
)
# Suffixes of LoRA variants farm does not implement: refused by name rather than ignored,
# since skipping them would give a silently different image.
_UNSUPPORTED = {".hada_w1_a": "LoHa", ".lokr_w1": "LoKr", ".lokr_w1_a": "LoKr", ".dora_scale": "DoRA",
                ".lora_mid.weight": "LoCon with a Tucker core", ".diff": "full-weight diff", ".oft_blocks": "OFT"}


@dataclass(frozen=True, eq=False)
class LowRank:
    """One layer's delta: scale * up @ down, reshaped to the layer's weight."""

    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def out_in(self) -> tuple[int, int]:
        """(out features, in features x kernel) of the product."""
        return self.up.shape[0], self.down[0].numel()

    def add_to(self, weight: torch.Tensor, strength: float) -> None:
        """weight (float32) += strength * scale * up @ down, in place."""
        up = self.up.to(weight.device, torch.float32).flatten(1)
        down = self.down.to(weight.device, torch.float32).flatten(1)
        weight.view(weight.shape[0], -1).addmm_(up, down, alpha=strength * self.scale)


@dataclass(frozen=True, eq=False)
class LoraFile:
    name: str
    layers: Mapping[str, LowRank]  # the file's key prefix -> delta

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for lr in self.layers.values() for t in (lr.up, lr.down))


def read_lora(path: Path, name: str | None = None) -> LoraFile:
    """Read a safetensors LoRA (either layout) onto the CPU, keeping its dtype."""
    path = Path(path)
    name = name or path.name
    if path.suffix.lower() not in SAFE_EXTENSIONS:
        raise LoraError(f"{name}: farm only loads LoRAs saved as .safetensors; convert the file and pick the "
                        "converted one")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own types for a truncated or foreign file
        raise LoraError(f"{name} is not a readable safetensors file: {exc}") from exc
    return parse_lora(tensors, name)


def parse_lora(tensors: Mapping[str, torch.Tensor], name: str) -> LoraFile:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        for suffix, kind in _UNSUPPORTED.items():
            if key.endswith(suffix):
                raise LoraError(f"{name} is a {kind} file (key {key!r}); farm applies plain LoRA "
                                "(lora_up/lora_down or lora_A/lora_B) only")
        for suffix, part in _PARTS:
            if key.endswith(suffix):
                prefix = key[: -len(suffix)].removeprefix("base_model.model.")
                parts.setdefault(prefix, {})[part] = value
                break
    layers: dict[str, LowRank] = {}
    for prefix, found in parts.items():
        if "up" not in found or "down" not in found:
            if set(found) == {"alpha"}:
                continue  # an alpha whose layer was pruned: nothing to apply
            missing = "up" if "up" not in found else "down"
            raise LoraError(f"{name}: layer {prefix!r} has no {missing} matrix; the file is damaged")
        up, down = found["up"], found["down"]
        if up.shape[1] != down.shape[0]:
            raise LoraError(f"{name}: layer {prefix!r} has up {tuple(up.shape)} and down {tuple(down.shape)}, "
                            "whose ranks differ; the file is damaged")
        alpha = found.get("alpha")
        layers[prefix] = LowRank(up, down, None if alpha is None else float(alpha))
    if not layers:
        raise LoraError(f"{name} holds no LoRA layers (no .lora_up/.lora_down or .lora_A/.lora_B tensors)")
    return LoraFile(name, layers)


@dataclass(frozen=True, eq=False)
class BoundLora:
    """A LoRA matched to one model's modules at one strength: (root, module, delta) triples,
    where root names a module tree ("unet", "te1", "te2")."""

    name: str
    strength: float
    targets: tuple[tuple[str, str, LowRank], ...]


def bind(lora: LoraFile, strength: float, key_maps: Mapping[str, Mapping[str, str]],
         roots: Mapping[str, torch.nn.Module]) -> tuple[BoundLora, set[str]]:
    """Match the file's layers to the modules of `roots` through their key maps (file key
    prefix -> module name, per root). Returns the binding and the file keys it used; a
    layer whose shape does not fit the module means the LoRA is for another model."""
    targets: list[tuple[str, str, LowRank]] = []
    used: set[str] = set()
    for prefix, low_rank in lora.layers.items():
        for root, key_map in key_maps.items():
            module_name = key_map.get(prefix)
            if module_name is None:
                continue
            weight = roots[root].get_submodule(module_name).weight
            out_features, in_features = weight.shape[0], weight[0].numel()
            if low_rank.out_in() != (out_features, in_features):
                raise LoraError(f"{lora.name} does not fit this checkpoint: layer {prefix} is "
                                f"{tuple(weight.shape)} here but the LoRA's delta is {low_rank.out_in()}; "
                                "it was trained for another base model (SD1.5 vs SDXL?)")
            targets.append((root, module_name, low_rank))
            used.add(prefix)
            break
    return BoundLora(lora.name, float(strength), tuple(targets)), used


@contextlib.contextmanager
def patched(roots: Mapping[str, torch.nn.Module], loras: Sequence[BoundLora]) -> Iterator[int]:
    """Apply `loras` in place for the duration of the block; yields how many weights changed.
    On exit (also after an error) every touched weight gets its saved bytes back."""
    by_weight: dict[tuple[str, str], list[tuple[float, LowRank]]] = {}
    for lora in loras:
        if lora.strength == 0.0:
            continue
        for root, module_name, low_rank in lora.targets:
            by_weight.setdefault((root, module_name), []).append((lora.strength, low_rank))
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for (root, module_name), deltas in by_weight.items():
                weight = roots[root].get_submodule(module_name).weight
                saved.append((weight, weight.detach().clone()))
                # float32 weights take the deltas in place (no delta tensor is allocated);
                # others are summed in a float32 copy and rounded once, as ComfyUI does
                total = weight.detach() if weight.dtype == torch.float32 else weight.detach().float()
                for strength, low_rank in deltas:
                    low_rank.add_to(total, strength)
                if total is not weight:
                    weight.copy_(total)
        for root in {root for root, _ in by_weight}:
            weights_changed(roots[root])  # a compiled stage holding these weights copies again
        yield len(saved)
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)
        for root in {root for root, _ in by_weight}:
            weights_changed(roots[root])
