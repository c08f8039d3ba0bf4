"""Text conditioning: prompts become CONDITIONING through the checkpoint's CLIP."""
from __future__ import annotations

from farm.nodes.spec import InputSpec, Node, NodeSpec, OutputSpec


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
        return (clip.encode(text),)


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
