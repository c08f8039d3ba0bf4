"""Conditioning nodes that farm's single-tensor CONDITIONING can honour exactly:
ConditioningConcat (more tokens after the prompt's, one attention over both)."""
from __future__ import annotations

import dataclasses

import torch

from farm.nodes.spec import InputSpec, Node, NodeSpec, OutputSpec
from farm.sampling.denoiser import Conditioning


class ConditioningConcat(Node):
    spec = NodeSpec(
        class_type="ConditioningConcat",
        display_name="Conditioning (Concat)",
        category="conditioning",
        required=(InputSpec("conditioning_to", "CONDITIONING"), InputSpec("conditioning_from", "CONDITIONING")),
        outputs=(OutputSpec("CONDITIONING", "CONDITIONING"),),
    )

    def run(self, rc, conditioning_to: Conditioning, conditioning_from: Conditioning):
        # ComfyUI appends the first entry of conditioning_from to each entry of
        # conditioning_to along the token axis; everything else stays conditioning_to's.
        def concat(entry: Conditioning) -> Conditioning:
            extra = conditioning_from.embeds[:1].to(entry.embeds.device, entry.embeds.dtype)
            extra = extra.expand(entry.embeds.shape[0], -1, -1)
            return dataclasses.replace(entry, embeds=torch.cat([entry.embeds, extra], dim=1))

        return (conditioning_to.map_entries(concat),)
