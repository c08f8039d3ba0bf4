"""The folders of a farm, as a ComfyUI user knows them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FarmPaths:
    """The folders a ComfyUI user knows: models/, input/, output/, temp/."""

    models: Path
    output: Path
    input: Path
    temp: Path

    @classmethod
    def under(cls, root: Path, models: Path | None = None, output: Path | None = None) -> "FarmPaths":
        root = Path(root)
        return cls(Path(models or root / "models"), Path(output or root / "output"), root / "input", root / "temp")
