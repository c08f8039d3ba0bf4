"""The node-output cache: outputs keyed by a node's input signature, bounded in entries
and bytes.

A signature names *what* a node computes (class, constants, ancestors' signatures), not
where it sits in a graph, so a second workflow that shares a subgraph with the first (the
same checkpoint, the same prompt) finds those outputs here and skips them.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


def _tensor_bytes(value: object) -> int:
    """Bytes of the tensors reachable from a node output (tensors inside dataclasses,
    tuples, lists and dicts). Model objects report 0: their memory is owned by the model
    provider, which evicts them itself."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if hasattr(value, "__dataclass_fields__") and not getattr(value, "owned_by_provider", False):
        return sum(_tensor_bytes(getattr(value, f)) for f in value.__dataclass_fields__)
    return 0


@dataclass(frozen=True)
class CacheLimits:
    max_entries: int = 256
    max_bytes: int = 2 * 1024**3


@dataclass
class _Entry:
    outputs: tuple
    nbytes: int


class OutputCache:
    """LRU over signatures; thread-safe because a worker may read it from its PNG thread."""

    def __init__(self, limits: CacheLimits = CacheLimits()):
        self.limits = limits
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # signature -> outputs
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, signature: str) -> tuple | None:
        with self._lock:
            entry = self._entries.get(signature)
            if entry is None:
                return None
            self._entries.move_to_end(signature)
            return entry.outputs

    def put(self, signature: str, outputs: tuple) -> None:
        nbytes = _tensor_bytes(outputs)
        if nbytes > self.limits.max_bytes:
            return  # one output larger than the whole budget: not worth evicting everything
        with self._lock:
            old = self._entries.pop(signature, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[signature] = _Entry(outputs, nbytes)
            self._bytes += nbytes
            while len(self._entries) > self.limits.max_entries or self._bytes > self.limits.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes
