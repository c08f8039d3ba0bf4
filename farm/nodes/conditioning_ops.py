"""Conditioning nodes that farm's single-tensor CONDITIONING can honour exactly:
ConditioningConcat (more tokens after the prompt's, one attention over both)."""
from __future__ import annotations

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
        # conditioning_to along the token axis; pooled output and sizes stay conditioning_to's.
        extra = conditioning_from.embeds[:1].to(conditioning_to.embeds.device, conditioning_to.embeds.dtype)
        extra = extra.expand(conditioning_to.embeds.shape[0], -1, -1)
        embeds = torch.cat([conditioning_to.embeds, extra], dim=1)
        return (Conditioning(embeds, conditioning_to.pooled, conditioning_to.time_ids),)
