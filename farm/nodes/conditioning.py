"""Text conditioning: prompts become CONDITIONING through the checkpoint's CLIP."""
from __future__ import annotations

import threading
import weakref

from farm.nodes.spec import InputSpec, Node, NodeSpec, OutputSpec

# One lock per resident text encoder. A worker runs two engine calls at once, and a LoRA's
# CLIP patch changes the encoder's weights in place while it encodes: an encode beside it,
# with or without LoRA, must wait rather than read half-patched weights.
_ENCODER_LOCKS: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _encoder_lock(clip) -> threading.Lock:
    with _LOCKS_LOCK:
        return _ENCODER_LOCKS.setdefault(clip.text_model, threading.Lock())


class CLIPTextEncode(Node):
    spec = NodeSpec(
        class_type="CLIPTextEncode",
        display_name="CLIP Text Encode (Prompt)",
        category="conditioning",
        required=(
            InputSpec("text", "STRING", multiline=True, batchable=True, tooltip="The prompt to encode."),
            InputSpec("clip", "CLIP", tooltip="Text encoder, usually from Load Checkpoint."),
        ),
        outputs=(OutputSpec("CONDITIONING", "CONDITIONING"),),
        description="Encodes a text prompt with a CLIP text encoder into conditioning for a sampler.",
    )

    def run(self, rc, text: str, clip):
        with _encoder_lock(clip):
            rc.check_interrupt()  # the wait for the lock may have been long
            return (clip.encode(text, rc.check_interrupt),)


class CLIPSetLastLayer(Node):
    spec = NodeSpec(
        class_type="CLIPSetLastLayer",
        display_name="CLIP Set Last Layer",
        category="conditioning",
        required=(
            InputSpec("clip", "CLIP"),
            InputSpec("stop_at_clip_layer", "INT", default=-1, min=-24, max=-1, step=1),
        ),
        outputs=(OutputSpec("CLIP", "CLIP"),),
        description="Uses the output of an earlier CLIP layer (-2 is the common 'clip skip 2').",
    )

    def run(self, rc, clip, stop_at_clip_layer: int):
        return (clip.with_last_layer(stop_at_clip_layer),)
