"""Images on their way out: the pixels a node hands over, and the name ComfyUI gives the
file (in `executed` events, history and /view)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImageRef:
    """How ComfyUI names a written image in `executed` events and history."""

    filename: str
    subfolder: str
    type: str  # "output" or "temp"

    def as_ui(self) -> dict:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}

    @classmethod
    def from_ui(cls, image: dict) -> "ImageRef":
        """From the ComfyUI JSON that history stores (the one place refs become dicts)."""
        return cls(image["filename"], image.get("subfolder", ""), image.get("type", "output"))

    @staticmethod
    def all_in(outputs: dict[str, dict]) -> tuple["ImageRef", ...]:
        """Every image of a prompt's outputs (output node id -> ui dict), in node order."""
        return tuple(ImageRef.from_ui(image) for ui in outputs.values() for image in ui.get("images", []))


@dataclass(frozen=True)
class ImageBatch:
    """Pixels to save: uint8 [B, H, W, C] on the CPU, with the PNG text chunks."""

    pixels: np.ndarray
    prefix: str
    kind: str  # "output" or "temp"
    text_chunks: dict[str, str] = field(default_factory=dict)


def png_text_chunks(prompt: dict | None, extra_pnginfo: dict | None) -> dict[str, str]:
    """ComfyUI's metadata: the API workflow under "prompt", one chunk per extra_pnginfo key
    (the UI graph travels as "workflow")."""
    chunks = {}
    if prompt is not None:
        chunks["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        chunks[key] = json.dumps(value)
    return chunks
