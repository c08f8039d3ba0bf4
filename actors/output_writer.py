"""PNG files on the head: workers reserve names (a tiny call) and send the pixels through
Ray's object store; encoding and writing happen on this actor's threads, never on a thread
that feeds a GPU. A `write` call returns once its files are on disk, so its ObjectRef is
the future the dispatcher awaits before it reports those jobs done."""
from __future__ import annotations

import asyncio
from pathlib import Path

import ray

from farm.engine.images import LocalImageWriter
from farm.records.images import ImageBatch, ImageRef


class OutputFiles:
    """One LocalImageWriter shared by every worker: names from concurrent reservations
    never collide, and each write has its own future."""

    def __init__(self, output_dir: Path, temp_dir: Path, threads: int = 4):
        self.writer = LocalImageWriter(output_dir, temp_dir, threads=threads)

    def reserve(self, prefix: str, kind: str, count: int) -> list[ImageRef]:
        return self.writer.reserve(prefix, kind, count)

    def write(self, refs: list[ImageRef], batch: ImageBatch):
        """A concurrent.futures.Future, done when those files are on disk; it raises
        farm.engine.images.OutputWriteError when they cannot be written."""
        return self.writer.write(refs, batch)

    def path(self, ref: ImageRef) -> Path:
        return self.writer.path(ref)

    def close(self) -> None:
        self.writer.close()


@ray.remote(num_cpus=0)
class OutputWriter:
    """Async actor: `reserve` is answered on the event loop at once while any number of
    `write`s wait for the pool, so naming never queues behind encoding."""

    def __init__(self, output_dir: str, temp_dir: str, threads: int = 4):
        self.files = OutputFiles(Path(output_dir), Path(temp_dir), threads)

    async def reserve(self, prefix: str, kind: str, count: int) -> list[ImageRef]:
        return self.files.reserve(prefix, kind, count)

    async def write(self, refs: list[ImageRef], batch: ImageBatch) -> None:
        await asyncio.wrap_future(self.files.write(refs, batch))

    async def folders(self) -> dict[str, str]:
        return {kind: str(path) for kind, path in self.files.writer.folders.items()}
