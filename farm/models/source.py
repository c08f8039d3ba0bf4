"""A model source: where a node fetches a model file its own models folder lacks.

A source is laid out like a models folder (checkpoints/, loras/, ...) and is named by a
path (a shared mount) or any URI fsspec knows (s3://bucket/models with s3fs installed,
gs://..., memory://... in tests). The head lists it beside its models folder, so a job may
name a file only the source holds; a worker that lacks the file fetches it before the
batch that needs it (farm.worker.core), into the fetch folder beside its models folder
(FETCHED_SUFFIX): the user's models folder is never written to.

A fetch is atomic: the bytes go to a temporary name in the fetch folder, the header is
checked to be safetensors, then the file is renamed into place, so a reader (another
worker of the node, a fetch that died half-way) never sees a partial file. Only
safetensors files are fetched: a pickle is refused by name, and a file whose header does
not parse is deleted and refused.
"""
from __future__ import annotations

import functools
import json
import os
import struct
import threading
import time
import uuid
from pathlib import Path, PurePosixPath

from farm.errors import CheckpointError, UnsafeCheckpointError

FETCHED_SUFFIX = ".fetched"  # /studio/models -> /studio/models.fetched/checkpoints/...
LISTING_TTL_S = 30.0  # a source's listing is read again after this long (a bucket list is slow)
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit for the JSON header
CHUNK_BYTES = 8 * 1024 * 1024
SAFE_SUFFIXES = (".safetensors", ".sft")


class ModelSourceError(CheckpointError):
    """A model source cannot be read, or a file fetched from it is not a usable safetensors file."""


def fetched_root(models_root: Path) -> Path:
    """The folder beside a models folder that holds what its node fetched."""
    models_root = Path(models_root)
    return models_root.with_name(models_root.name + FETCHED_SUFFIX)


def name_parts(kind: str, name: str) -> tuple[str, ...]:
    """The parts of a model name below its folder; a name that climbs out ('..', absolute) is refused."""
    text = str(name).replace("\\", "/")
    pure = PurePosixPath(text)
    if not text or pure.is_absolute() or ".." in pure.parts or (len(text) > 1 and text[1] == ":"):
        raise CheckpointError(f"{name!r} is outside the {kind} folder: give a name relative to it, "
                              "e.g. 'sd15/model.safetensors'")
    return tuple(p for p in pure.parts if p not in ("", "."))


class ModelSource:
    """One source, by path or URI. Thread-safe; its listing is cached for LISTING_TTL_S."""

    def __init__(self, uri: str):
        import fsspec

        self.uri = str(uri)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        except (ImportError, ValueError) as exc:
            raise ModelSourceError(f"model source {self.uri}: {exc} (give a folder or a URI fsspec knows, "
                                   "e.g. s3://bucket/models with s3fs installed)") from None
        self.root = self.root.rstrip("/")
        self._lock = threading.Lock()
        self._listing: dict[str, tuple[float, list[str]]] = {}  # kind -> (read at, names)

    def _path(self, kind: str, name: str) -> str:
        return "/".join((self.root, kind, *name_parts(kind, name)))

    def names(self, kind: str) -> list[str]:
        """Safetensors files below the source's `kind` folder (none if it has no such folder)."""
        with self._lock:
            cached = self._listing.get(kind)
            if cached is not None and time.monotonic() - cached[0] < LISTING_TTL_S:
                return cached[1]
        base = f"{self.root}/{kind}"
        try:
            found = self.fs.find(base) if self.fs.isdir(base) else []
        except OSError as exc:
            raise ModelSourceError(f"cannot list the model source {self.uri}: {exc}") from None
        prefix = self.fs._strip_protocol(base).rstrip("/") + "/"
        names = sorted(p[len(prefix):] for p in (self.fs._strip_protocol(p) for p in found)
                       if p.startswith(prefix) and p.lower().endswith(SAFE_SUFFIXES))
        with self._lock:
            self._listing[kind] = (time.monotonic(), names)
        return names

    def size_bytes(self, kind: str, name: str) -> int:
        try:
            return int(self.fs.size(self._path(kind, name)))
        except FileNotFoundError:
            raise CheckpointError(f"{name!r} is neither in the {kind} folder nor in the model source "
                                  f"{self.uri}") from None

    def fetch(self, kind: str, name: str, dest_root: Path) -> Path:
        """Copy `name` into dest_root/<kind>/<name> (atomically); returns the file's path."""
        parts = name_parts(kind, name)
        suffix = PurePosixPath(parts[-1] if parts else "").suffix.lower()
        if suffix not in SAFE_SUFFIXES:
            raise UnsafeCheckpointError(
                f"{name!r} is not a safetensors file; the farm fetches and loads only .safetensors "
                f"(a pickle such as .ckpt could run code): convert it and put the .safetensors in {self.uri}")
        source = self._path(kind, name)
        target = Path(dest_root, kind, *parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        # unique per process and thread: two workers of one node may fetch the same file at once
        partial = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
        try:
            try:
                with self.fs.open(source, "rb") as src, open(partial, "wb") as out:
                    while chunk := src.read(CHUNK_BYTES):
                        out.write(chunk)
            except FileNotFoundError:
                raise CheckpointError(f"{name!r} is neither in the {kind} folder nor in the model source "
                                      f"{self.uri}") from None
            except IsADirectoryError:
                raise ModelSourceError(f"{name!r} in the model source {self.uri} is a folder; only single "
                                       ".safetensors files are fetched") from None
            except OSError as exc:
                raise ModelSourceError(f"fetching {name!r} from {self.uri} into {target.parent} failed: {exc}") from None
            check_safetensors(partial, f"{name!r} from the model source {self.uri}")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target


def check_safetensors(path: Path, what: str) -> None:
    """The file is a whole safetensors file: a header length, a JSON header of tensors
    whose byte ranges lie inside the file. Raises ModelSourceError naming `what`."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelSourceError(f"{what} is not a safetensors file ({size} bytes, too short for a header)")
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise ModelSourceError(f"{what} is not a safetensors file (its first 8 bytes do not give a header "
                                   "length that fits the file; a pickle or a truncated download?)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelSourceError(f"{what} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelSourceError(f"{what} is not a safetensors file (its header is not a JSON object)")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelSourceError(f"{what} is not a safetensors file (tensor {key!r} has no data_offsets)")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise ModelSourceError(f"{what} is truncated: its header names {8 + length + end} bytes, the file has {size}")


@functools.lru_cache(maxsize=16)
def model_source(uri: str) -> ModelSource:
    """One ModelSource per URI in a process: folders made per request share its listing."""
    return ModelSource(uri)
