"""A ComfyUI-style models folder: models/checkpoints, models/loras, models/vae, ...

Names are paths relative to their folder with forward slashes ("sdxl/base.safetensors"),
exactly as ComfyUI lists them, so a workflow saved on a ComfyUI box resolves here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.errors import CheckpointError

SAFE_EXTENSIONS = (".safetensors", ".sft")
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
FOLDER_KINDS = ("checkpoints", "loras", "vae", "embeddings", "controlnet", "upscale_models")


@dataclass(frozen=True)
class ModelFolders:
    root: Path  # the "models" folder itself

    def folder(self, kind: str) -> Path:
        if kind not in FOLDER_KINDS:
            raise CheckpointError(f"unknown model folder {kind!r}; known: {', '.join(FOLDER_KINDS)}")
        return self.root / kind

    def names(self, kind: str) -> list[str]:
        """Loadable entries: safetensors files and diffusers folders (a model_index.json or
        config.json inside), sorted. Pickle files are listed too so that choosing one gets
        the clear refusal, not a confusing 'not in list'."""
        base = self.folder(kind)
        if not base.is_dir():
            return []
        found: list[str] = []
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(base).as_posix()
            if path.is_file() and path.suffix.lower() in SAFE_EXTENSIONS + PICKLE_EXTENSIONS:
                if not any(p.name.endswith(".safetensors") for p in path.parents if p != base):
                    found.append(rel)
            elif path.is_dir() and (path / "model_index.json").is_file():
                found.append(rel)
        return found

    def resolve(self, kind: str, name: str) -> Path:
        """The path of a listed name; refuses names that climb out of the folder."""
        base = self.folder(kind).resolve()
        path = (base / name).resolve()
        if base != path and base not in path.parents:
            raise CheckpointError(f"{name!r} is outside the {kind} folder")
        if not path.exists():
            raise CheckpointError(f"{name!r} not found in {base}")
        return path

    def size_bytes(self, kind: str, name: str) -> int:
        """Bytes on disk of a model (a diffusers folder: all its files); placement weighs
        load costs with it."""
        path = self.resolve(kind, name)
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
