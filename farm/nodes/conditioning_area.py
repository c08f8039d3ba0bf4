"""The conditioning nodes that place prompts on the latent and on the schedule, under
ComfyUI's names and ranges: ConditioningCombine (several prompts at once),
ConditioningSetArea / ConditioningSetAreaPercentage (a prompt for one box of the image) and
ConditioningSetTimestepRange (a prompt for part of the schedule). They only annotate the
entries; the sampler honours them (farm.sampling.regions)."""
from __future__ import annotations

import dataclasses

from farm.nodes.spec import MAX_RESOLUTION, InputSpec, Node, NodeSpec, OutputSpec
from farm.sampling.denoiser import Conditioning
from farm.sampling.regions import Area

_OUT = (OutputSpec("CONDITIONING", "CONDITIONING"),)
_COND = InputSpec("conditioning", "CONDITIONING")


def _strength() -> InputSpec:
    return InputSpec("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01,
                     tooltip="Weight of this prompt where it overlaps others.")


def _pixels(name: str, default: int, low: int) -> InputSpec:
    return InputSpec(name, "INT", default=default, min=low, max=MAX_RESOLUTION, step=8)


def _fraction(name: str, default: float) -> InputSpec:
    return InputSpec(name, "FLOAT", default=default, min=0, max=1.0, step=0.01)


class ConditioningCombine(Node):
    spec = NodeSpec(
        class_type="ConditioningCombine",
        display_name="Conditioning (Combine)",
        category="conditioning",
        required=(InputSpec("conditioning_1", "CONDITIONING"), InputSpec("conditioning_2", "CONDITIONING")),
        outputs=_OUT,
        description="Both conditionings at once: the sampler averages their predictions, weighted by strength.",
    )

    def run(self, rc, conditioning_1: Conditioning, conditioning_2: Conditioning):
        return (Conditioning.from_entries([conditioning_1, conditioning_2]),)


class ConditioningSetArea(Node):
    spec = NodeSpec(
        class_type="ConditioningSetArea",
        display_name="Conditioning (Set Area)",
        category="conditioning",
        required=(_COND, _pixels("width", 64, 64), _pixels("height", 64, 64), _pixels("x", 0, 0),
                  _pixels("y", 0, 0), _strength()),
        outputs=_OUT,
        description="Confines the conditioning to a box of the image (pixels, in steps of 8).",
    )

    def run(self, rc, conditioning: Conditioning, width: int, height: int, x: int, y: int, strength: float):
        area = Area(height // 8, width // 8, y // 8, x // 8)
        return (conditioning.map_entries(lambda e: dataclasses.replace(e, area=area, strength=strength)),)


class ConditioningSetAreaPercentage(Node):
    spec = NodeSpec(
        class_type="ConditioningSetAreaPercentage",
        display_name="Conditioning (Set Area with Percentage)",
        category="conditioning",
        required=(_COND, _fraction("width", 1.0), _fraction("height", 1.0), _fraction("x", 0), _fraction("y", 0),
                  _strength()),
        outputs=_OUT,
        description="Confines the conditioning to a box given as fractions of the image's width and height.",
    )

    def run(self, rc, conditioning: Conditioning, width: float, height: float, x: float, y: float, strength: float):
        area = Area(height, width, y, x, percent=True)
        return (conditioning.map_entries(lambda e: dataclasses.replace(e, area=area, strength=strength)),)


class ConditioningSetTimestepRange(Node):
    spec = NodeSpec(
        class_type="ConditioningSetTimestepRange",
        display_name="ConditioningSetTimestepRange",
        category="advanced/conditioning",
        required=(_COND, InputSpec("start", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001),
                  InputSpec("end", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.001)),
        outputs=_OUT,
        description="Applies the conditioning only between two points of the schedule (0 = first step, 1 = last).",
    )

    def run(self, rc, conditioning: Conditioning, start: float, end: float):
        return (conditioning.map_entries(lambda e: dataclasses.replace(e, start_percent=start, end_percent=end)),)
