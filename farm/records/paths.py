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
    # where a node fetches a model file its models folder lacks (a folder or an fsspec URI,
    # laid out like models/); None: every node's models folder must hold every file
    model_source: str | None = None

    @classmethod
    def under(cls, root: Path, models: Path | None = None, output: Path | None = None,
              model_source: str | None = None) -> "FarmPaths":
        """Absolute paths: they are handed to actors, whose working folder is not ours."""
        root = Path(root).absolute()
        return cls(Path(models or root / "models").absolute(), Path(output or root / "output").absolute(),
                   root / "input", root / "temp", model_source)

    def create(self) -> "FarmPaths":
        """Make the folders the farm writes to (not models/: that one is the user's)."""
        for folder in (self.output, self.input, self.temp):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def prefix_problem(prefix: str, folder: Path) -> str | None:
    """Why a SaveImage filename_prefix cannot be used below `folder` (it climbs out: an
    absolute path, "..", a link out), or None. Checked at submission and again at save."""
    prefix = prefix.replace("\\", "/")
    subfolder, _, stem = prefix.rpartition("/")
    root = Path(folder).resolve()
    directory = (root / subfolder).resolve()
    if directory != root and root not in directory.parents:
        return f"filename_prefix {prefix!r} points outside the output folder; use a relative name such as 'renders/shot1'"
    if not stem or stem in (".", ".."):
        return f"filename_prefix {prefix!r} has no file name part"
    return None
