"""One compiled UNet per layout on a worker, whatever checkpoint a batch uses.

torch.compile works on a module. Compiling each checkpoint's UNet on its own costs, per
checkpoint: a dynamo trace (tens of seconds for SD1.5 on a GPU even when inductor's disk
cache already has the code), and in reduce-overhead mode a CUDA graph and memory pool for
every row bucket. A graph recorded on one checkpoint's weights is also recorded again when a
tier move (device -> pinned RAM -> device) gives those weights new addresses.

So a worker keeps one *stage* per UNet layout (the architecture's config and the dtype): a
UNet of its own that is compiled once and whose weights are overwritten from the batch's
checkpoint when another checkpoint, or another LoRA set, comes. The copy is one pass over the
weights on the device (SD1.5 1.7 GB, SDXL 5.1 GB in fp16); at an H100's memory bandwidth
that is a few milliseconds (an estimate from the bandwidth, not yet measured), against a
batch's seconds. The price is one UNet's worth of device memory per layout, which the worker
sets aside from its checkpoint budget (`UNetCompiler(set_aside=...)`).

A checkpoint's UNet keeps its own weights untouched and in NCHW: the eager paths (ControlNet
residuals, a compiler fault's fallback) run on it directly."""
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


def layout_key(unet: torch.nn.Module) -> str:
    """UNets with equal keys run the same compiled graph: same class, config and dtype, on
    one device. Config keys starting with "_" (diffusers' version, the source path) are not
    part of the layout."""
    config = {k: v for k, v in dict(getattr(unet, "config", {})).items() if not k.startswith("_")}
    param = next(unet.parameters())
    return f"{type(unet).__name__} {param.dtype} {param.device} " + json.dumps(config, sort_keys=True, default=str)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


class WeightStage:
    """A UNet of one layout and the compiled runner of it (farm.models.compiled.CompiledUNet).
    `run(unet, ...)` runs the compiled graph on `unet`'s weights; thread-safe: a call holds
    the stage from the copy to the end of the graph."""

    def __init__(self, unet: torch.nn.Module, make_runner, label: str, copy_from: torch.nn.Module | None = None):
        """`unet` becomes the stage (its weights are overwritten later: pass a copy or a
        random UNet, never a checkpoint's own); `make_runner(module)` compiles it."""
        self.unet = unet
        self.label = label
        self.nbytes = module_bytes(unet)
        self.runner = make_runner(unet)
        self._slots = self._tensors(unet)
        self._held: tuple[weakref.ref, int] | None = None  # (whose weights, their version)
        self.users: set[str] = set()  # labels (checkpoint names) of the UNets it ran
        self.copies = 0  # times weights were copied in (one per switch of checkpoint or LoRA set)
        self.copy_s = 0.0
        self._lock = threading.RLock()
        if copy_from is not None:
            self._held = (weakref.ref(copy_from), weights_version(copy_from))

    @staticmethod
    def _tensors(unet: torch.nn.Module) -> list[torch.Tensor]:
        return [*(p.data for p in unet.parameters()), *unet.buffers()]

    def run(self, unet: torch.nn.Module, *args) -> torch.Tensor:
        with self._lock:
            self.hold(unet)
            return self.runner(*args)

    def hold(self, unet: torch.nn.Module) -> None:
        """Make the stage's weights those of `unet` (a copy, unless they are already)."""
        with self._lock:
            held = self._held
            if held is not None and held[0]() is unet and held[1] == weights_version(unet):
                return
            started = time.perf_counter()
            sources = self._tensors(unet)
            if len(sources) != len(self._slots):
                raise ValueError(f"{type(unet).__name__} has {len(sources)} tensors, the stage {self.label} "
                                 f"{len(self._slots)}: not the same layout")
            with torch.no_grad():
                # in place: the compiled graph (and its CUDA graphs) read these addresses
                for dst, src in zip(self._slots, sources):
                    dst.copy_(src, non_blocking=True)
            self._held = (weakref.ref(unet), weights_version(unet))
            self.copies += 1
            self.copy_s += time.perf_counter() - started


def stage_of(unet: torch.nn.Module, make_runner, label: str) -> WeightStage:
    """A new stage for `unet`'s layout, starting as a copy of it (weights included)."""
    clone = copy.deepcopy(unet)
    clone.eval().requires_grad_(False)
    return WeightStage(clone, make_runner, label, copy_from=unet)


class StagedRunner:
    """The runner a checkpoint's DiffusionModel calls: puts the checkpoint's weights on the
    stage (when they are not there already), then runs the stage's compiled UNet."""

    def __init__(self, stage: WeightStage, unet: torch.nn.Module):
        self.stage = stage
        self._unet = weakref.ref(unet)  # the checkpoint's; the runner must not keep it alive

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor,
                 added: dict[str, torch.Tensor] | None) -> torch.Tensor:
        unet = self._unet()
        if unet is None:
            raise RuntimeError(f"the checkpoint behind stage {self.stage.label} left memory mid-run")
        return self.stage.run(unet, x, timestep, embeds, added)
