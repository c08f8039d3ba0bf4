"""What the loaders of one-file models (VAELoader, UpscaleModelLoader) share: a pickle is
refused by name at validation, the file's size and time join the cache key, and the last
few loaded models are kept per device so that a sweep reads the file once."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import PurePosixPath
from typing import Callable

from farm.models.store import PICKLE_EXTENSIONS
from farm.nodes.spec import NodeContext


def refuse_pickle(name: str) -> str | None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in PICKLE_EXTENSIONS:
        return (f"{name} is a pickle file ({suffix}); loading it could run arbitrary code, so the farm "
                "only loads safetensors. Convert it to .safetensors and pick the converted file.")
    return None


def file_stamp(ctx: NodeContext, folder: str, name: str) -> str:
    # size and mtime, not a hash: a replaced file is a new signature without reading it
    stat = ctx.models.resolve(folder, name).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


class RecentModels:
    """The last `max_models` models loaded, by (file, stamp, device, dtype). The memory is
    this cache's, not the checkpoint provider's: a VAE or an upscaler is small beside a UNet."""

    def __init__(self, max_models: int = 2):
        self.max_models = max_models
        self._models: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # real loads (tests read it)

    def get(self, ctx: NodeContext, folder: str, name: str, device, dtype, load: Callable[..., object]) -> object:
        path = ctx.models.resolve(folder, name)
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, str(device), str(dtype))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model = load(path, device, dtype)  # under the lock: two engine calls never load one file twice
            self.loads += 1
            self._models[key] = model
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return model
