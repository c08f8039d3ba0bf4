"""The model provider of a single process: checkpoints by name, the last few kept loaded."""
from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from farm.models.store import ModelFolders


class LocalModelProvider:
    """Loads a checkpoint the first time it is asked for and keeps the `max_loaded` most
    recently used ones; `loads` counts real loads (tests and metrics read it)."""

    def __init__(self, folders: ModelFolders, device: torch.device, dtype: torch.dtype, max_loaded: int = 2):
        self.folders = folders
        self.device, self.dtype = device, dtype
        self.max_loaded = max_loaded
        self.loads = 0
        self._loaded: OrderedDict[str, object] = OrderedDict()  # name -> LoadedCheckpoint
        self._lock = threading.Lock()
        self.compiler = None  # farm.models.compiled.UNetCompiler; the renderer sets it

    def checkpoint(self, name: str):
        from farm.models.load import (
            load_checkpoint,  # torch-heavy; imported when first needed
        )

        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            loaded = load_checkpoint(self.folders.resolve("checkpoints", name), self.device, self.dtype)
            self.loads += 1
            self._loaded[name] = loaded
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return loaded

    def unload_all(self) -> None:
        with self._lock:
            self._loaded.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
