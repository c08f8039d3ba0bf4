"""PNG files on the head: workers send pixels through Ray's object store; encoding and
writing happen on this actor's threads, never on a thread that feeds a GPU."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import ray

from farm.engine.images import LocalImageWriter
from farm.errors import FarmError
from farm.records.images import ImageBatch, ImageRef


class OutputWriteError(FarmError):
    """An image was handed over but its file did not appear."""


class OutputFiles:
    """LocalImageWriter shared by every worker, plus a per-caller wait: `wait(refs)`
    returns once those files are on disk, whoever else is writing meanwhile."""

    def __init__(self, output_dir: Path, temp_dir: Path, threads: int = 4):
        self.writer = LocalImageWriter(output_dir, temp_dir, threads=threads)
        self._flush_lock = threading.Lock()

    def save(self, batch: ImageBatch) -> list[ImageRef]:
        return self.writer.save(batch)

    def path(self, ref: ImageRef) -> Path:
        return self.writer.folders[ref.type] / ref.subfolder / ref.filename

    def wait(self, refs: list[ImageRef], timeout_s: float = 300.0) -> None:
        """Flush surfaces a write error (disk full, permissions); the file check is what
        says *these* images are done (a flush from another thread may have taken them)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._flush_lock:
                self.writer.flush()
            missing = [r for r in refs if not self.path(r).exists()]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise OutputWriteError(f"{len(missing)} image(s) were not written within {timeout_s:.0f} s, "
                                       f"e.g. {self.path(missing[0])}: check the output folder's disk")
            time.sleep(0.01)

    def close(self) -> None:
        self.writer.close()


@ray.remote(num_cpus=0, max_concurrency=16)
class OutputWriter:
    """Threaded actor: a slow `wait` never holds up another worker's `save`."""

    def __init__(self, output_dir: str, temp_dir: str, threads: int = 4):
        self.files = OutputFiles(Path(output_dir), Path(temp_dir), threads)

    def save(self, batch: ImageBatch) -> list[ImageRef]:
        return self.files.save(batch)

    def wait(self, refs: list[ImageRef], timeout_s: float = 300.0) -> None:
        self.files.wait(refs, timeout_s)

    def folders(self) -> dict[str, str]:
        return {kind: str(path) for kind, path in self.files.writer.folders.items()}
