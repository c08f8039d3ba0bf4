"""A worker's model residency, for real: checkpoints in device memory, in pinned host RAM,
or on local disk, and the moves between them.

The bookkeeping (which tier holds what, what to evict, what a reload costs) is
farm.records.residency.Residency's; this module makes memory agree with it. After
every load it reconciles: a checkpoint the accounting no longer holds in a tier leaves
that tier here too.

Tiers are inclusive, as the accounting counts them: a checkpoint on the GPU usually also
has a pinned host copy, so leaving VRAM costs nothing and coming back is one fast copy
(54.8 GB/s pinned vs 6.7 GB/s pageable on an H100). Weights never change at inference,
so the copy stays valid.

Moves swap the tensors under the same module objects. A model the engine's output cache
still holds therefore stays usable wherever it lives; and dropping a checkpoint sends
its tensors to the meta device, so a stale holder fails loudly instead of silently
keeping gigabytes alive (`on_drop` tells the owner to clear such caches).

On a CPU worker the device memory *is* host RAM: there is nothing to copy or pin, and a
checkpoint stays loaded while the accounting holds it in either memory tier.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from farm.errors import CheckpointError
from farm.models.store import ModelFolders
from farm.models.tier_config import GiB, TierBudgets, TierConfig, TierMove  # noqa: F401 (re-exported)
from farm.records.residency import Residency, ResidencyReport, Tier

log = logging.getLogger(__name__)

UNBOUNDED_BYTES = 1 << 60  # the disk tier without a local copy: the models folder itself
ON_NODE_TTL_S = 30.0  # the node's file listing is read again after this long (or after a fetch)


def host_memory() -> tuple[int, int]:
    """(total, available) bytes of host RAM from /proc/meminfo (Linux); a conservative
    guess elsewhere."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    found[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return found.get("MemTotal", 16 * GiB), found.get("MemAvailable", 8 * GiB)


def available_host_bytes() -> int:
    return host_memory()[1]


def derive_budgets(config: TierConfig, device: torch.device, workers_on_host: int = 1) -> TierBudgets:
    host_share = int(available_host_bytes() * config.host_share / max(1, workers_on_host))
    if config.vram_bytes is not None:
        vram = config.vram_bytes
    elif device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        vram = max(0, free - config.vram_headroom_bytes)
    else:
        vram = host_share
    pinned = config.pinned_bytes if config.pinned_bytes is not None else host_share
    if config.local_dir is None:
        disk = UNBOUNDED_BYTES
    elif config.disk_bytes is not None:
        disk = config.disk_bytes
    else:
        Path(config.local_dir).mkdir(parents=True, exist_ok=True)
        disk = int(shutil.disk_usage(config.local_dir).free * 0.9)
    return TierBudgets(vram, pinned, disk)


# --- tensors under modules ------------------------------------------------------------------

def checkpoint_modules(checkpoint) -> list[torch.nn.Module]:
    return [checkpoint.unet, checkpoint.vae, *checkpoint.text_encoders]


Slot = tuple[torch.nn.Module, bool, str]  # (owner module, is a parameter, attribute name)


def tensor_slots(checkpoint) -> list[Slot]:
    slots: list[Slot] = []
    for module in checkpoint_modules(checkpoint):
        for sub in module.modules():
            slots.extend((sub, True, name) for name, _ in sub.named_parameters(recurse=False))
            slots.extend((sub, False, name) for name, b in sub.named_buffers(recurse=False) if b is not None)
    return slots


def _get(slot: Slot) -> torch.Tensor:
    owner, is_param, name = slot
    return owner._parameters[name].data if is_param else owner._buffers[name]


def _set(slot: Slot, tensor: torch.Tensor) -> None:
    owner, is_param, name = slot
    if is_param:
        owner._parameters[name].data = tensor
    else:
        owner._buffers[name] = tensor


def checkpoint_bytes(checkpoint) -> int:
    return sum(_get(s).element_size() * _get(s).nelement() for s in tensor_slots(checkpoint))


@dataclass
class _Loaded:
    """A checkpoint this worker holds in memory."""

    checkpoint: object  # farm.models.load.LoadedCheckpoint
    slots: list[Slot]
    on_device: bool  # the modules' tensors are in device memory
    host: list[torch.Tensor] | None = None  # pinned copies, slot by slot (CUDA workers only)


class TieredModelProvider:
    """The engine's model provider on a farm worker. Thread-safe: the engine thread asks
    for models while the actor's control thread may free them."""

    def __init__(self, folders: ModelFolders, device: torch.device, dtype: torch.dtype, residency: Residency,
                 loader: Callable[[Path, torch.device, torch.dtype], object] | None = None,
                 local_dir: Path | None = None):
        self.folders = folders
        self.device, self.dtype = device, dtype
        self.residency = residency
        self._loader = loader
        self.local_dir = Path(local_dir) if local_dir is not None else None
        self.moves: list[TierMove] = []  # every load into device memory, oldest first
        self.on_drop: list[Callable[[str], None]] = []  # called after a checkpoint left memory
        self.evictions: Counter[str] = Counter()  # tier value -> checkpoints that left it (metrics)
        self._loaded: dict[str, _Loaded] = {}  # name -> in memory
        # used by the running batches (a worker overlaps two): stays on the device; name -> batches
        self._kept: Counter[str] = Counter()
        self.compiler = None  # farm.models.compiled.UNetCompiler; the worker sets it
        self._on_node: tuple[float, frozenset[str]] | None = None  # (listed at, checkpoint files here)
        self._lock = threading.RLock()

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    # -- the provider protocol ---------------------------------------------------------------

    def checkpoint(self, name: str):
        """The checkpoint in device memory, brought from the nearest tier."""
        with self._lock:
            size = self._file_bytes(name)
            loaded = self._loaded.get(name)
            before = self.residency.source(name)
            # recency, and what must leave to make room (what the running batch uses last)
            outcome = self.residency.load(name, size, keep=frozenset(self._kept))
            self.evictions.update(e.tier.value for e in outcome.evicted)
            if loaded is None or not loaded.on_device:
                try:
                    self._bring(name, size, loaded, before)
                except BaseException:
                    self.residency.forget(name)  # else the worker would report a file it cannot load
                    raise
            self._reconcile()
            return self._loaded[name].checkpoint

    def set_aside(self, nbytes: int) -> None:
        """Device memory taken for good by something other than checkpoints (a compiled
        UNet's stage): the checkpoints' device budget shrinks by it, and what no longer fits
        leaves the device now, before the new allocation needs the room."""
        with self._lock:
            evicted = self.residency.set_aside(Tier.GPU, nbytes, keep=frozenset(self._kept))
            self.evictions.update(Tier.GPU.value for _ in evicted)
            self._reconcile()
        if self._cuda and evicted:
            torch.cuda.empty_cache()

    def keep(self, names: set[str]) -> None:
        """Bring every checkpoint the next batch needs and keep it on the device until
        `release`, even where the accounting would move it (a batch using more models than
        fit runs over budget rather than on the CPU)."""
        with self._lock:
            self._kept.update(set(names))
            for name in sorted(names):
                self.checkpoint(name)

    def release(self, names: set[str] | None = None) -> None:
        """The batch that kept `names` is done with them (None: every batch is)."""
        with self._lock:
            if names is None:
                self._kept.clear()
            else:
                self._kept.subtract(set(names))
                self._kept = +self._kept  # drop the names no batch keeps any more
            self._reconcile()

    def report(self) -> ResidencyReport:
        """What this worker holds, for the dispatcher. Without a local copy folder the
        models folder counts as local disk for whatever this worker has read before. With
        a model source, also the files on this node (the rest would be fetched)."""
        report = self.residency.report()
        if self.folders.source:
            report = dataclasses.replace(report, on_node=self._files_on_node())
        return report

    def ensure_file(self, name: str) -> Path:
        """The checkpoint's file on this node, fetched from the model source if only it has it."""
        path = self.folders.ensure("checkpoints", name)
        with self._lock:
            self._on_node = None  # it may be new here
        return path

    def _files_on_node(self) -> frozenset[str]:
        with self._lock:
            cached = self._on_node
            if cached is not None and time.monotonic() - cached[0] < ON_NODE_TTL_S:
                return cached[1]
        names = frozenset(self.folders.local_names("checkpoints"))
        with self._lock:
            self._on_node = (time.monotonic(), names)
        return names

    def unload(self) -> None:
        """Leave device memory (POST /free, out of memory): pinned copies stay."""
        with self._lock:
            for name, loaded in list(self._loaded.items()):
                if name not in self._kept and loaded.on_device:
                    self._leave_device(name, loaded, keep_host=True)
        if self._cuda:
            torch.cuda.empty_cache()

    def resident(self) -> dict[str, str]:
        """name -> "device" | "host", what memory really holds (tests compare it with the
        accounting's report)."""
        with self._lock:
            return {n: "device" if l.on_device else "host" for n, l in self._loaded.items()}

    # -- moves -----------------------------------------------------------------------------------

    def _bring(self, name: str, size: int, loaded: _Loaded | None, before: Tier) -> None:
        started = time.perf_counter()
        if loaded is not None and loaded.host is not None:
            for slot, host in zip(loaded.slots, loaded.host):
                _set(slot, host.to(self.device, non_blocking=True))
            torch.cuda.synchronize(self.device)
            loaded.on_device, source = True, Tier.PINNED
        elif loaded is not None:  # CPU worker: host RAM is its device memory
            loaded.on_device, source = True, Tier.PINNED
        else:
            source = Tier.DISK if before is Tier.DISK else Tier.STORE
            checkpoint = self._load(self._local_path(name))
            self._loaded[name] = _Loaded(checkpoint, tensor_slots(checkpoint), on_device=True)
        checkpoint = self._loaded[name].checkpoint
        checkpoint.device = self.device
        seconds = time.perf_counter() - started
        self.moves.append(TierMove(name, source, size, seconds))
        log.info("checkpoint %s into device memory from %s: %.2f GiB in %.2f s", name, source.value,
                 size / GiB, seconds)
        self.residency.costs.observe(source, size, seconds)

    def _reconcile(self) -> None:
        """Make memory hold what the accounting holds (plus what the running batch keeps)."""
        report = self.residency.report()
        for name, loaded in list(self._loaded.items()):
            want_device = name in report.gpu or name in self._kept
            want_host = name in report.pinned
            if not self._cuda:
                if not (want_device or want_host):
                    self._drop(name, loaded)
                else:
                    loaded.on_device = want_device
                continue
            if want_host and loaded.host is None:
                loaded.host = [_pinned_copy(_get(s)) for s in loaded.slots]
            if loaded.on_device and not want_device:
                self._leave_device(name, loaded, keep_host=want_host)
            elif not want_host and loaded.host is not None:
                if loaded.on_device:
                    loaded.host = None
                else:
                    self._drop(name, loaded)
        if self.local_dir is not None:
            self._trim_local(report)

    def _leave_device(self, name: str, loaded: _Loaded, keep_host: bool) -> None:
        if not self._cuda:
            loaded.on_device = False
            return
        if keep_host and loaded.host is None:
            loaded.host = [_pinned_copy(_get(s)) for s in loaded.slots]
        if loaded.host is None:
            self._drop(name, loaded)
            return
        for slot, host in zip(loaded.slots, loaded.host):
            _set(slot, host)
        loaded.on_device = False
        loaded.checkpoint.device = torch.device("cpu")

    def _drop(self, name: str, loaded: _Loaded) -> None:
        for owner, is_param, attr in loaded.slots:
            t = owner._parameters[attr] if is_param else owner._buffers[attr]
            meta = torch.empty(t.shape, dtype=t.dtype, device="meta")  # .data cannot change to meta
            if is_param:
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)  # frees it for whoever holds it
                owner._parameters[attr] = torch.nn.Parameter(meta, requires_grad=False)
            else:
                owner._buffers[attr] = meta
        loaded.host = None
        del self._loaded[name]
        for callback in self.on_drop:
            callback(name)

    def _load(self, path: Path):
        if self._loader is None:
            from farm.models.load import (
                load_checkpoint,  # torch-heavy: imported when first needed
            )

            self._loader = load_checkpoint
        return self._loader(path, self.device, self.dtype)

    # -- files -------------------------------------------------------------------------------------

    def _file_bytes(self, name: str) -> int:
        return _path_bytes(self.folders.resolve("checkpoints", name))

    def _local_path(self, name: str) -> Path:
        """The file to read: the models folder's own, or its copy under local_dir (made
        first, so the next load reads local disk)."""
        source = self.folders.resolve("checkpoints", name)
        if self.local_dir is None:
            return source
        target = self.local_dir / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            try:
                if source.is_dir():
                    shutil.copytree(source, partial, dirs_exist_ok=True)
                else:
                    shutil.copyfile(source, partial)
                os.replace(partial, target)
            except OSError as exc:
                raise CheckpointError(f"could not copy {name} to the local model cache {self.local_dir}: {exc}; "
                                      "free disk space there or lower the disk budget") from exc
        return target

    def _trim_local(self, report: ResidencyReport) -> None:
        keep = report.disk | report.pinned | report.gpu | set(self._loaded)
        for path in self.local_dir.rglob("*"):
            name = path.relative_to(self.local_dir).as_posix()
            if path.is_file() and path.suffix == ".safetensors" and name not in keep:
                path.unlink(missing_ok=True)


def _pinned_copy(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
    out.copy_(t, non_blocking=False)
    return out


def _path_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
