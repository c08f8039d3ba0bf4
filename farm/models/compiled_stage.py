"""One compiled UNet (and VAE decoder) per layout on a worker, whatever checkpoint a batch uses.

torch.compile works on a module. Compiling each checkpoint's UNet on its own costs, per
checkpoint: a dynamo trace (tens of seconds for SD1.5 on a GPU even when inductor's disk
cache already has the code), and in reduce-overhead mode a CUDA graph and memory pool for
every row bucket. A graph recorded on one checkpoint's weights is also recorded again when a
tier move (device -> pinned RAM -> device) gives those weights new addresses.

So a worker keeps one *stage* per UNet layout (the architecture's config and the dtype): a
UNet of its own that is compiled once and whose weights are overwritten from the batch's
checkpoint when another checkpoint, or another LoRA set, comes. The copy is one pass over the
weights on the device (SD1.5 1.7 GB, SDXL 5.1 GB in fp16); at an H100's memory bandwidth
that is a few milliseconds, against a batch's seconds. Measured through the farm on an H100
(benchmarks/results/README-gpu-2026-12-07.md): 0.25 s of wall time per switch when the copy
was a Python loop of copy_ calls (call 7); as one multi-tensor call, 21 ms of wall time and
8.6 ms of GPU time (call 8). The price is one UNet's worth of device memory per layout,
which the worker sets aside from its checkpoint budget (`UNetCompiler(set_aside=...)`).

A checkpoint's UNet keeps its own weights untouched, in NCHW and with its attention
projections apart: the eager paths (ControlNet residuals) run on it directly, and a
compiler fault's fallback runs the stage eagerly. The stage may differ in layout
(channels_last, fused q/k/v whose parts are views into the fused weight); weights are copied
by state-dict name, which both share. VAEs get stages the same way (the decoder's first
compile took 22.4 s for SD1.5 on an H100, cold; the copy is 160 MB)."""
from __future__ import annotations

import copy
import json
import threading
import time
import weakref

import torch

_VERSION_ATTR = "_farm_weights_version"


def weights_changed(module: torch.nn.Module) -> None:
    """Say that `module`'s weights were changed in place (a LoRA patched in or restored):
    a stage holding a copy of them copies again before its next call."""
    object.__setattr__(module, _VERSION_ATTR, getattr(module, _VERSION_ATTR, 0) + 1)


def weights_version(module: torch.nn.Module) -> int:
    return getattr(module, _VERSION_ATTR, 0)


def layout_key(module: torch.nn.Module) -> str:
    """Modules with equal keys run the same compiled graph: same class, config and dtype, on
    one device. Config keys starting with "_" (diffusers' version, the source path) are not
    part of the layout."""
    config = {k: v for k, v in dict(getattr(module, "config", {})).items() if not k.startswith("_")}
    param = next(module.parameters())
    return f"{type(module).__name__} {param.dtype} {param.device} " + json.dumps(config, sort_keys=True, default=str)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


class WeightStage:
    """A module of one layout and the compiled runner of it (farm.models.compiled.CompiledUNet,
    farm.models.compiled_vae.CompiledDecoder).
    `run(module, ...)` runs the compiled graph on `module`'s weights; thread-safe: a call holds
    the stage from the copy to the end of the graph."""

    def __init__(self, module: torch.nn.Module, make_runner, label: str, copy_from: torch.nn.Module | None = None):
        """`module` becomes the stage (its weights are overwritten later: pass a copy or a
        random one, never a checkpoint's own); `make_runner(module)` compiles it."""
        self.module = module
        self.label = label
        self.nbytes = module_bytes(module)
        # the layout, by name, as the checkpoints have it: the runner may then fuse layers
        # (their parts become views into the fused weight) or change memory formats
        self._names = list(self._tensors(module))
        self._name_set = frozenset(self._names)
        self.runner = make_runner(module)
        self._held: tuple[weakref.ref, int] | None = None  # (whose weights, their version)
        self.users: set[str] = set()  # labels (checkpoint names) of the UNets it ran
        self.copies = 0  # times weights were copied in (one per switch of checkpoint or LoRA set)
        self.copy_s = 0.0  # wall time of the copies, the launches and any wait for launch-queue room
        self._copy_gpu_s = 0.0  # the GPU's own time on them (CUDA events, read once done)
        self._copy_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._events_lock = threading.Lock()  # not the stage's: a report must not wait for a compile
        self._lock = threading.RLock()
        if copy_from is not None:
            self._held = (weakref.ref(copy_from), weights_version(copy_from))

    @staticmethod
    def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {**{n: p.data for n, p in module.named_parameters()}, **dict(module.named_buffers())}

    def run(self, module: torch.nn.Module, *args) -> torch.Tensor:
        with self._lock:
            self.hold(module)
            return self.runner(*args)

    def hold(self, module: torch.nn.Module) -> None:
        """Make the stage's weights those of `module` (a copy, unless they are already)."""
        with self._lock:
            held = self._held
            if held is not None and held[0]() is module and held[1] == weights_version(module):
                return
            started = time.perf_counter()
            sources = self._tensors(module)
            if sources.keys() != self._name_set:
                raise ValueError(f"{type(module).__name__} has {len(sources)} tensors, the stage {self.label} "
                                 f"{len(self._names)}, or other names: not the same layout")
            # looked up now, not once: a runner's fallback to eager moves convolutions back to
            # NCHW, which gives those weights new tensors
            slots = self._tensors(self.module)
            device = next(iter(slots.values())).device
            stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
            begin = self._recorded_event(stream) if stream is not None else None
            with torch.no_grad():
                # in place: the compiled graph (and its CUDA graphs) read these addresses. One
                # call for every tensor: multi-tensor kernels where layouts match, and one
                # Python call, not ~700 (SD1.5's UNet), each a chance for the worker's other
                # threads (prompt encoding, decode) to hold the GIL
                torch._foreach_copy_([slots[n] for n in self._names], [sources[n] for n in self._names],
                                     non_blocking=True)
            if stream is not None:
                end = self._recorded_event(stream)
                with self._events_lock:
                    self._copy_events.append((begin, end))
                    self._fold_copy_events()
            self._held = (weakref.ref(module), weights_version(module))
            self.copies += 1
            self.copy_s += time.perf_counter() - started

    # Wall time alone cannot tell a slow copy from a launch that waited for room in a full
    # launch queue (the GPU still busy with the last batch, so no idle time): CUDA events
    # around each copy give the GPU's own time, read later so the sampling path never syncs.
    @staticmethod
    def _recorded_event(stream: torch.cuda.Stream) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def _fold_copy_events(self) -> None:
        pending = []
        for begin, end in self._copy_events:
            if end.query():
                self._copy_gpu_s += begin.elapsed_time(end) / 1000
            else:
                pending.append((begin, end))
        self._copy_events = pending

    def copy_gpu_s(self) -> float | None:
        """The GPU's time on the weight copies it has finished (never waits: a report must not
        wait for the stage, which a first call holds while it compiles); None off CUDA."""
        with self._events_lock:
            if next(self.module.parameters()).device.type != "cuda":
                return None
            self._fold_copy_events()
            return self._copy_gpu_s


def stage_of(module: torch.nn.Module, make_runner, label: str) -> WeightStage:
    """A new stage for `module`'s layout, starting as a copy of it (weights included)."""
    clone = copy.deepcopy(module)
    clone.eval().requires_grad_(False)
    return WeightStage(clone, make_runner, label, copy_from=module)


class StagedRunner:
    """What a checkpoint's model calls in place of its module (the UNet's eps path, the VAE's
    decode): puts the checkpoint's weights on the stage (when they are not there already),
    then runs the stage's compiled module with the same arguments."""

    def __init__(self, stage: WeightStage, module: torch.nn.Module):
        self.stage = stage
        self._module = weakref.ref(module)  # the checkpoint's; the runner must not keep it alive

    def __call__(self, *args) -> torch.Tensor:
        module = self._module()
        if module is None:
            raise RuntimeError(f"the checkpoint behind stage {self.stage.label} left memory mid-run")
        return self.stage.run(module, *args)
