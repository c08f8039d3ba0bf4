"""Where a sweep's images and manifest.jsonl go: a folder on the head, or any filesystem
fsspec knows by URI (s3://bucket/renders, gs://..., file:///data/renders, memory://...).

Inside a `ray job submit` job the process runs in Ray's unpacked copy of the working dir,
which is deleted with the job's runtime environment: a relative folder would land there, so
it is refused and the user is asked for an absolute path or a URI.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from farm.errors import FarmError

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in a job's entrypoint process


class DestinationError(FarmError):
    """The output destination cannot be used (relative inside a Ray job, unknown protocol,
    not writable)."""


def in_ray_job() -> bool:
    return RAY_JOB_ENV in os.environ


class Destination:
    """A folder of outputs plus its manifest, through fsspec."""

    def __init__(self, target: str):
        import fsspec

        if "://" not in target:
            path = Path(target).expanduser()
            if not path.is_absolute():
                if in_ray_job():
                    raise DestinationError(
                        f"--output-dir {target} is relative: in a `ray job submit` job it would land in Ray's "
                        f"temporary copy of the working dir ({os.getcwd()}), deleted after the job; give an "
                        "absolute folder on the head (e.g. /data/renders) or a URI (e.g. s3://bucket/renders)")
                path = path.resolve()
            target = str(path)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(target)
        except (ImportError, ValueError) as exc:
            raise DestinationError(f"--output-dir {target}: {exc}") from None
        self.target = target
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise DestinationError(f"cannot create the output folder {target}: {exc}") from None

    def url(self, name: str) -> str:
        """How the manifest names a file: a plain path for a local folder, else a URI."""
        path = f"{self.root.rstrip('/')}/{name}"
        return path if "://" not in self.target else self.fs.unstrip_protocol(path)

    @property
    def manifest_url(self) -> str:
        return self.url(MANIFEST)

    def read_manifest(self) -> list[dict]:
        """The entries of an earlier run (none for a new destination); a line that does not
        parse (a run killed mid-write) is skipped: its job renders again."""
        path = f"{self.root.rstrip('/')}/{MANIFEST}"
        if not self.fs.exists(path):
            return []
        entries = []
        with self.fs.open(path, "r", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s line %d does not parse; its job will render again", self.manifest_url, number)
                    continue
                if isinstance(entry, dict) and "key" in entry:
                    entries.append(entry)
        return entries

    def write_manifest(self, entries: list[dict]) -> None:
        """Whole-file replace (object stores cannot append): written aside, then moved."""
        path = f"{self.root.rstrip('/')}/{MANIFEST}"
        tmp = path + ".partial"
        with self.fs.open(tmp, "w", encoding="utf-8") as f:
            for entry in entries:
                f.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
        self.fs.mv(tmp, path)

    def put(self, source: Path, name: str) -> str:
        """Copy one rendered file (on this node's disk) to the destination; its URL."""
        path = f"{self.root.rstrip('/')}/{name}"
        with open(source, "rb") as src, self.fs.open(path, "wb") as dst:
            dst.write(src.read())
        return self.url(name)
