"""Where rendered images go: ComfyUI's file naming, PNG encoding, and writing off the
thread that feeds the GPU (the engine's image sink on one machine).

A node asks for names synchronously (cheap, so the `executed` event can carry them at
once) and hands over the pixels; encoding and writing run on a small thread pool, and a
job is reported finished only after `flush()` for its files returns. A farm's writer uses
`reserve` and `write` directly: each write's future says when *its* files are on disk.
"""
from __future__ import annotations

import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from farm.errors import FarmError
from farm.records.images import ImageBatch, ImageRef
from farm.records.paths import prefix_problem

PNG_COMPRESS_LEVEL = 4  # ComfyUI's default: a fair size/speed trade at 512-1024 px


class OutputPathError(FarmError):
    """A filename prefix that would write outside its folder."""


class OutputWriteError(FarmError):
    """An image could not be written (disk full, permissions, a file where a folder goes)."""


class ImageSink(Protocol):
    def save(self, batch: ImageBatch) -> list[ImageRef]:
        """Reserve names and start writing; return the names without waiting."""

    def flush(self) -> None:
        """Block until everything handed over so far is on disk (or raise its error)."""


def split_prefix(prefix: str, folder: Path) -> tuple[Path, str, str]:
    """(directory, file stem, subfolder) for a prefix such as "renders/shot1"; refuses
    prefixes that climb out of `folder` (absolute paths, "..")."""
    problem = prefix_problem(prefix, folder)
    if problem is not None:
        raise OutputPathError(problem)
    subfolder, _, stem = prefix.replace("\\", "/").rpartition("/")
    directory = (folder.resolve() / subfolder).resolve()
    return directory, stem, subfolder


def encode_png(pixels: np.ndarray, text_chunks: dict[str, str]) -> tuple[Image.Image, PngInfo]:
    info = PngInfo()
    for key, value in text_chunks.items():
        info.add_text(key, value)
    return Image.fromarray(pixels), info


class LocalImageWriter:
    """Writes into output/ and temp/ folders on this machine."""

    def __init__(self, output_dir: Path, temp_dir: Path, threads: int = 2):
        self.folders = {"output": Path(output_dir), "temp": Path(temp_dir)}
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="png")
        self._pending: list[Future] = []
        self._next_counter: dict[tuple[Path, str], int] = {}  # (dir, stem) -> next free counter
        self._lock = threading.Lock()

    def _reserve(self, directory: Path, stem: str, count: int) -> int:
        """First of `count` consecutive counters after any file already there, as ComfyUI
        numbers them; remembered so concurrent jobs never collide."""
        with self._lock:
            key = (directory, stem)
            if key not in self._next_counter:
                pattern = re.compile(re.escape(stem) + r"_(\d+)_")
                existing = [int(m.group(1)) for p in directory.glob(f"{stem}_*")
                            if (m := pattern.match(p.name))] if directory.is_dir() else []
                self._next_counter[key] = max(existing, default=0) + 1
            first = self._next_counter[key]
            self._next_counter[key] = first + count
            return first

    def reserve(self, prefix: str, kind: str, count: int) -> list[ImageRef]:
        """Names for `count` images under `prefix` (ComfyUI's `stem_00001_.png`, consecutive),
        never handed out twice by this writer."""
        directory, stem, subfolder = split_prefix(prefix, self.folders[kind])
        first = self._reserve(directory, stem, count)
        return [ImageRef(f"{stem.replace('%batch_num%', str(i))}_{first + i:05}_.png", subfolder, kind)
                for i in range(count)]

    def path(self, ref: ImageRef) -> Path:
        return self.folders[ref.type] / ref.subfolder / ref.filename

    def write(self, refs: list[ImageRef], batch: ImageBatch) -> Future:
        """Encode and write the batch's images under names `reserve` gave, on the pool; the
        future is done once they are all on disk (or holds the first error)."""
        if len(refs) != len(batch.pixels):
            raise ValueError(f"{len(refs)} names for {len(batch.pixels)} images")
        return _all_of([self._pool.submit(self._write, self.path(ref), pixels, batch.text_chunks)
                        for ref, pixels in zip(refs, batch.pixels)])

    def save(self, batch: ImageBatch) -> list[ImageRef]:
        refs = self.reserve(batch.prefix, batch.kind, len(batch.pixels))
        future = self.write(refs, batch)
        with self._lock:
            self._pending.append(future)
        return refs

    @staticmethod
    def _write(path: Path, pixels: np.ndarray, text_chunks: dict[str, str]) -> None:
        tmp = path.with_suffix(".png.part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            image, info = encode_png(pixels, text_chunks)
            image.save(tmp, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
            tmp.replace(path)  # a reader never sees half a PNG
        except OSError as exc:
            try:  # a full disk leaves the part written so far: free it, it is no image
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise OutputWriteError(f"cannot write {path}: {exc.strerror or exc}; check that its folder "
                                   f"is a writable directory with free space") from exc

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self.flush()
        self._pool.shutdown()


def _all_of(futures: list[Future]) -> Future:
    """One future for several: done when all are, with the first error among them."""
    joined: Future = Future()
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            joined.set_exception(errors[0])
        else:
            joined.set_result(None)

    if not futures:
        joined.set_result(None)
    for future in futures:
        future.add_done_callback(one_done)
    return joined
