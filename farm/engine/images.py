"""Where rendered images go: ComfyUI's file naming, PNG encoding, and writing off the
thread that feeds the GPU (the engine's image sink on one machine).

A node asks for names synchronously (cheap, so the `executed` event can carry them at
once) and hands over the pixels; encoding and writing run on a small thread pool, and a
job is reported finished only after `flush()` for its files returns.
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

    def save(self, batch: ImageBatch) -> list[ImageRef]:
        directory, stem, subfolder = split_prefix(batch.prefix, self.folders[batch.kind])
        first = self._reserve(directory, stem, len(batch.pixels))
        refs = []
        for i, pixels in enumerate(batch.pixels):
            name = f"{stem.replace('%batch_num%', str(i))}_{first + i:05}_.png"
            refs.append(ImageRef(name, subfolder, batch.kind))
            future = self._pool.submit(self._write, directory / name, pixels, batch.text_chunks)
            with self._lock:
                self._pending.append(future)
        return refs

    @staticmethod
    def _write(path: Path, pixels: np.ndarray, text_chunks: dict[str, str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        image, info = encode_png(pixels, text_chunks)
        tmp = path.with_suffix(".png.part")
        image.save(tmp, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
        tmp.replace(path)  # a reader never sees half a PNG

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self.flush()
        self._pool.shutdown()
