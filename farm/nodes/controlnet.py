"""ControlNetLoader, ControlNetApplyAdvanced and the legacy ControlNetApply.

Applying a ControlNet only records a hint on the conditioning (farm.sampling.control):
the network runs inside the sampler, at each step within the hint's window, on the rows
the hint covers (farm.models.controlnet.control_residuals). The cache key of an applied
conditioning is its signature: the image arrives by link from a node whose signature holds
the image's bytes (LoadImage hashes its file), the network from ControlNetLoader, whose
signature holds the file's name, size and time.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from pathlib import PurePosixPath

import torch

from farm.errors import InvalidInputError
from farm.models.controlnet import LoadedControlNet, load_controlnet
from farm.models.store import PICKLE_EXTENSIONS
from farm.nodes.spec import InputSpec, Node, NodeContext, NodeSpec, OutputSpec
from farm.sampling.control import ControlHint
from farm.sampling.denoiser import Conditioning

FOLDER = "controlnet"


def controlnet_names(ctx: NodeContext) -> list[str]:
    return ctx.models.names(FOLDER)


class _LoadedControlNets:
    """The last few ControlNets loaded, by file (path, size, time) and device: a second
    job with the same ControlNet, or the same job run again, does not read it again."""

    def __init__(self, max_loaded: int = 2):
        self.max_loaded = max_loaded
        self.loads = 0
        self._loaded: OrderedDict[tuple, LoadedControlNet] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ctx: NodeContext, name: str, device: torch.device, dtype: torch.dtype) -> LoadedControlNet:
        path = ctx.models.resolve(FOLDER, name)
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, str(device), dtype)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            # loaded under the lock: two jobs asking at once load it once
            net = load_controlnet(path, device, dtype, name)
            self.loads += 1
            self._loaded[key] = net
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return net


CONTROLNETS = _LoadedControlNets()


class ControlNetLoader(Node):
    model_files = {"control_net_name": "controlnet"}
    spec = NodeSpec(
        class_type="ControlNetLoader",
        display_name="Load ControlNet Model",
        category="loaders",
        required=(InputSpec("control_net_name", "COMBO", choices=controlnet_names,
                            tooltip="ControlNet file in models/controlnet."),),
        outputs=(OutputSpec("CONTROL_NET", "CONTROL_NET"),),
        description="Loads a ControlNet (original single file or diffusers layout, safetensors only).",
    )

    @classmethod
    def validate_inputs(cls, ctx: NodeContext, control_net_name: str) -> str | None:
        suffix = PurePosixPath(control_net_name).suffix.lower()
        if suffix in PICKLE_EXTENSIONS:
            return (f"{control_net_name} is a pickle file ({suffix}); loading it could run arbitrary code, so the "
                    "farm only loads safetensors. Convert it to .safetensors and pick the converted file.")
        return None

    @classmethod
    def fingerprint(cls, ctx: NodeContext, control_net_name: str) -> str | None:
        # size and time, not a hash: a replaced file is a new signature without reading it
        stat = ctx.models.resolve(FOLDER, control_net_name).stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def run(self, rc, control_net_name: str):
        return (CONTROLNETS.get(rc.node_ctx, control_net_name, rc.device, rc.dtype),)


def _strength() -> InputSpec:
    return InputSpec("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01)


def _hint(control_net: LoadedControlNet, image: torch.Tensor, strength: float, start: float = 0.0,
          end: float = 1.0, apply_to_uncond: bool = False) -> ControlHint:
    if not isinstance(control_net, LoadedControlNet):
        raise InvalidInputError(f"control_net must come from a ControlNet loader, got {type(control_net).__name__}")
    return ControlHint(control_net, image.movedim(-1, 1), strength, start, end, apply_to_uncond)


def _with(conditioning: Conditioning, hint: ControlHint) -> Conditioning:
    # after the ControlNets already there: ComfyUI's previous_controlnet chain, summed
    return dataclasses.replace(conditioning, control=conditioning.control + (hint,))


class ControlNetApplyAdvanced(Node):
    spec = NodeSpec(
        class_type="ControlNetApplyAdvanced",
        display_name="Apply ControlNet",
        category="conditioning/controlnet",
        required=(
            InputSpec("positive", "CONDITIONING"), InputSpec("negative", "CONDITIONING"),
            InputSpec("control_net", "CONTROL_NET"), InputSpec("image", "IMAGE"), _strength(),
            InputSpec("start_percent", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001),
            InputSpec("end_percent", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.001),
        ),
        optional=(InputSpec("vae", "VAE"),),
        outputs=(OutputSpec("CONDITIONING", "positive"), OutputSpec("CONDITIONING", "negative")),
        description="Guides the sampler with a ControlNet and a control image, on both the positive and "
                    "the negative side, between start_percent and end_percent of the sampling.",
    )

    def run(self, rc, positive, negative, control_net, image, strength: float, start_percent: float,
            end_percent: float, vae=None):
        # vae: ComfyUI hands it to ControlNets that take latent hints (SD3, Flux); SD1.x and
        # SDXL ControlNets take pixels, so it is accepted and not needed
        if strength == 0:
            return positive, negative
        # one hint object for both sides, as ComfyUI shares one ControlNet copy between them
        hint = _hint(control_net, image, strength, start_percent, end_percent)
        return _with(positive, hint), _with(negative, hint)


class ControlNetApply(Node):
    spec = NodeSpec(
        class_type="ControlNetApply",
        display_name="Apply ControlNet (OLD)",
        category="conditioning/controlnet",
        required=(InputSpec("conditioning", "CONDITIONING"), InputSpec("control_net", "CONTROL_NET"),
                  InputSpec("image", "IMAGE"), _strength()),
        outputs=(OutputSpec("CONDITIONING", "CONDITIONING"),),
        description="Deprecated: use Apply ControlNet. Guides the sampler with a ControlNet over the whole "
                    "sampling; a negative without a ControlNet of its own gets this one too.",
    )

    def run(self, rc, conditioning, control_net, image, strength: float):
        if strength == 0:
            return (conditioning,)
        return (_with(conditioning, _hint(control_net, image, strength, apply_to_uncond=True)),)
