"""Stop checks inside one long model call.

An interrupt is honoured between nodes and after every sampler step; a single call can
still run for seconds (a step at a large size, the CLIP forward of a long prompt, a VAE
decode of a big batch). `checked_blocks` runs a stop check before each block of a model
(a transformer layer, a resnet block) while the call is under way, so the stop lands
within one block. The check is a plain callable that raises (farm.errors.Interrupted)
when the run must end: whoever owns the stop flag supplies it.

Hooks are added for the block's duration only and fire only on the thread that added
them: a model shared by two engine calls at once (one encodes while the other samples)
never answers the other call's flag.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable, Iterator

import torch

StopCheck = Callable[[], None]  # raises when the run must stop; returns otherwise

# The blocks a stop check runs before, by class name (diffusers and transformers name them
# so in every version farm supports). A block is a few milliseconds of work on a GPU and
# rarely more than a fraction of a second on a CPU, yet there are few enough of them (SD1.5:
# 12 CLIP layers, 22 UNet resnets + 16 transformer blocks, 15 VAE decoder resnets) that
# a Python call before each costs nothing measurable.
BLOCK_CLASSES = frozenset({
    "CLIPEncoderLayer",  # the text encoders
    "ResnetBlock2D",  # UNet and VAE
    "BasicTransformerBlock",  # the UNet's attention blocks
})


def blocks_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of `model` a stop check runs before (see BLOCK_CLASSES)."""
    return [m for m in model.modules() if type(m).__name__ in BLOCK_CLASSES]


@contextlib.contextmanager
def checked_blocks(models: Iterable[torch.nn.Module | None], check: StopCheck | None) -> Iterator[None]:
    """Within the block, `check()` runs before every block of `models` that starts on this
    thread. With no check (or no models) it does nothing."""
    if check is None:
        yield
        return
    owner = threading.get_ident()

    def before_block(_module, _args) -> None:
        if threading.get_ident() == owner:
            check()

    handles = [block.register_forward_pre_hook(before_block)
               for model in models if model is not None for block in blocks_of(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
