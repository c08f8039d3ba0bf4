"""ComfyUI-style model folders: models/checkpoints, models/loras, models/vae, ... and the
extra roots of ComfyUI's extra_model_paths.yaml.

Names are paths relative to their folder with forward slashes ("sdxl/base.safetensors"),
exactly as ComfyUI lists them, so a workflow saved on a ComfyUI box resolves here. As in
ComfyUI, symlinked files and folders are followed: confinement is on the name the user
gives (no "..", no absolute path), not on where a link points.

extra_model_paths.yaml (ComfyUI's format): top-level groups, each with an optional
`base_path` (~ and $VARS expanded, relative to the file's folder), an optional
`is_default` (its folders are searched first), and `<kind>: <path>` entries whose value
holds one path per line, relative to base_path. The file is read from $FARM_EXTRA_MODEL_PATHS,
else `extra_model_paths.yaml` beside the models folder (ComfyUI keeps it beside models/)
or inside it.

With a model source (farm.models.source: a shared folder or fsspec URI laid out like a
models folder), the source's files are listed too, and `ensure` fetches one this node
lacks into the fetch folder beside the models folder, which is then searched last.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from farm.errors import CheckpointError
from farm.models.source import fetched_root, model_source
from farm.models.source import name_parts as _name_parts

SAFE_EXTENSIONS = (".safetensors", ".sft")
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
FOLDER_KINDS = ("checkpoints", "loras", "vae", "embeddings", "controlnet", "upscale_models")
EXTRA_PATHS_ENV = "FARM_EXTRA_MODEL_PATHS"
EXTRA_PATHS_FILE = "extra_model_paths.yaml"


@dataclass(frozen=True)
class ModelFolders:
    root: Path  # the "models" folder itself
    # (kind, folder) pairs from extra_model_paths.yaml; None: found and read at construction
    extra: tuple[tuple[str, Path, bool], ...] | None = field(default=None)
    source: str | None = None  # a model source (folder or fsspec URI) for files this node lacks

    def __post_init__(self) -> None:
        if self.extra is None:
            object.__setattr__(self, "extra", tuple(read_extra_paths(find_extra_paths_file(Path(self.root)))))

    @classmethod
    def for_paths(cls, paths) -> "ModelFolders":
        """The folders of a farm (farm.records.paths.FarmPaths), with its model source."""
        return cls(Path(paths.models), source=getattr(paths, "model_source", None))

    def _source(self):
        return model_source(self.source)

    def folder(self, kind: str) -> Path:
        """The folder of `kind` below the models root (where new files go)."""
        if kind not in FOLDER_KINDS:
            raise CheckpointError(f"unknown model folder {kind!r}; known: {', '.join(FOLDER_KINDS)}")
        return Path(self.root) / kind

    def folders(self, kind: str) -> list[Path]:
        """Every folder searched for `kind`, in order: is_default extras, models/<kind>, the other extras."""
        main = self.folder(kind)
        first = [p for k, p, default in self.extra if k == kind and default]
        rest = [p for k, p, default in self.extra if k == kind and not default]
        if self.source:
            rest.append(fetched_root(Path(self.root)) / kind)
        seen, out = set(), []
        for path in (*first, main, *rest):
            if path not in seen:
                seen.add(path)
                out.append(path)
        return out

    def names(self, kind: str) -> list[str]:
        """Loadable entries of every folder of `kind`: safetensors files and diffusers folders
        (a model_index.json inside), sorted, a name found twice listed once. Pickle files
        are listed too so that choosing one gets the clear refusal, not a confusing 'not in
        list'."""
        found = set(self.local_names(kind))
        if self.source:
            found.update(self._source().names(kind))
        return sorted(found)

    def local_names(self, kind: str) -> list[str]:
        """What this node's own folders hold (the fetch folder included, the source not)."""
        found: set[str] = set()
        for base in self.folders(kind):
            found.update(_entries(base))
        return sorted(found)

    def ensure(self, kind: str, name: str) -> Path:
        """The path of `name` on this node, fetched from the model source first when only
        the source has it (no source: as resolve)."""
        try:
            return self.resolve(kind, name)
        except CheckpointError:
            if not self.source:
                raise
        return self._source().fetch(kind, name, fetched_root(Path(self.root)))

    def resolve(self, kind: str, name: str) -> Path:
        """The path of a listed name (symlinks kept: the loader follows them). Names that
        climb out ("..", absolute) are refused whatever exists there."""
        parts = _name_parts(kind, name)
        for base in self.folders(kind):
            path = base.joinpath(*parts)
            if path.exists():
                return path
        where = ", ".join(str(p) for p in self.folders(kind))
        raise CheckpointError(f"{name!r} not found in {where}")

    def size_bytes(self, kind: str, name: str) -> int:
        """Bytes on disk of a model (a diffusers folder: all its files); placement weighs
        load costs with it. A file only the model source holds: its size there."""
        try:
            path = self.resolve(kind, name)
        except CheckpointError:
            if not self.source:
                raise
            _name_parts(kind, name)  # a name that climbs out is refused, not looked up
            return self._source().size_bytes(kind, name)
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size


def _entries(base: Path) -> list[str]:
    """Model names below one folder; symlinked folders are followed (once each: a link
    loop ends where a folder repeats)."""
    if not base.is_dir():
        return []
    out: list[str] = []
    visited: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        here = Path(dirpath)
        stat = here.stat()
        if (stat.st_dev, stat.st_ino) in visited:
            dirnames[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        rel = here.relative_to(base)
        if here != base and (here / "model_index.json").is_file():
            out.append(rel.as_posix())  # a diffusers folder is one model: not walked further
            dirnames[:] = []
            continue
        if here.name.endswith(".safetensors") and here != base:
            dirnames[:] = []  # a diffusers-layout folder named like a file: its parts are not models
            continue
        dirnames.sort()
        for filename in filenames:
            if filename.lower().endswith(SAFE_EXTENSIONS + PICKLE_EXTENSIONS) and (here / filename).is_file():
                out.append((rel / filename).as_posix())
    return out


def find_extra_paths_file(models_root: Path) -> Path | None:
    configured = os.environ.get(EXTRA_PATHS_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise CheckpointError(f"${EXTRA_PATHS_ENV} names {path}, which is not a file")
        return path
    for candidate in (models_root.parent / EXTRA_PATHS_FILE, models_root / EXTRA_PATHS_FILE):
        if candidate.is_file():
            return candidate
    return None


def read_extra_paths(path: Path | None) -> list[tuple[str, Path, bool]]:
    """(kind, folder, is_default) of each entry of an extra_model_paths.yaml; kinds farm
    does not load (clip_vision, ...) are skipped."""
    if path is None:
        return []
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected groups of folder entries, as ComfyUI's extra_model_paths.yaml")
    out: list[tuple[str, Path, bool]] = []
    for group_name, group in config.items():
        if group is None:
            continue
        if not isinstance(group, dict):
            raise CheckpointError(f"{path}: group {group_name!r} is not a mapping of folder names to paths")
        group = dict(group)
        base = group.pop("base_path", None)
        default = bool(group.pop("is_default", False))
        base_dir = path.parent
        if isinstance(base, str) and base.strip():
            base_dir = path.parent / Path(os.path.expandvars(os.path.expanduser(base.strip())))
        for kind, value in group.items():
            if kind not in FOLDER_KINDS or not isinstance(value, str):
                continue
            for line in value.splitlines():
                line = os.path.expandvars(os.path.expanduser(line.strip()))
                if line:
                    out.append((kind, (base_dir / line).absolute(), default))
    return out
