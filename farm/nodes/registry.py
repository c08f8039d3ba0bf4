"""Which node classes exist (class_type -> class), and their /object_info description."""
from __future__ import annotations

from typing import Iterable, Iterator

from farm.nodes.canny import Canny
from farm.nodes.conditioning import CLIPSetLastLayer, CLIPTextEncode
from farm.nodes.conditioning_area import (
    ConditioningCombine,
    ConditioningSetArea,
    ConditioningSetAreaPercentage,
    ConditioningSetTimestepRange,
)
from farm.nodes.conditioning_ops import ConditioningConcat
from farm.nodes.controlnet import (
    ControlNetApply,
    ControlNetApplyAdvanced,
    ControlNetLoader,
)
from farm.nodes.image import ImageScale, LoadImage, PreviewImage, SaveImage
from farm.nodes.image_ops import (
    ImageInvert,
    ImageScaleBy,
    ImageScaleToTotalPixels,
    LoadImageMask,
)
from farm.nodes.inpaint import InpaintModelConditioning, VAEEncodeForInpaint
from farm.nodes.latent import EmptyLatentImage, LatentUpscale, VAEDecode, VAEEncode
from farm.nodes.latent_ops import (
    LatentFromBatch,
    LatentUpscaleBy,
    RepeatLatentBatch,
    SetLatentNoiseMask,
)
from farm.nodes.loaders import CheckpointLoaderSimple
from farm.nodes.lora import LoraLoader, LoraLoaderModelOnly
from farm.nodes.sampler import KSampler, KSamplerAdvanced
from farm.nodes.sdxl_text import CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner
from farm.nodes.spec import Node, NodeContext, NodeSpec
from farm.nodes.step_cache import EasyCache
from farm.nodes.vae_loader import VAELoader

BUILTIN_NODES: tuple[type[Node], ...] = (
    CheckpointLoaderSimple, CLIPTextEncode, CLIPSetLastLayer, EmptyLatentImage, KSampler, KSamplerAdvanced,
    VAEDecode, VAEEncode, LoadImage, SaveImage, PreviewImage, LatentUpscale, ImageScale,
    LoraLoader, LoraLoaderModelOnly,
    LatentUpscaleBy, RepeatLatentBatch, LatentFromBatch, SetLatentNoiseMask, VAEEncodeForInpaint,
    InpaintModelConditioning, ImageScaleBy, ImageScaleToTotalPixels, ImageInvert, LoadImageMask, ConditioningConcat,
    ControlNetLoader, ControlNetApplyAdvanced, ControlNetApply, Canny,
)
BUILTIN_NODES += (VAELoader, ConditioningCombine, ConditioningSetArea, ConditioningSetAreaPercentage,
                  ConditioningSetTimestepRange, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, EasyCache)
# ComfyUI's frontend files core nodes under this module name.
CORE_PYTHON_MODULE = "nodes"


class NodeRegistry:
    def __init__(self, nodes: Iterable[type[Node]] = ()):
        self._classes: dict[str, type[Node]] = {}  # class_type -> node class
        for node in nodes:
            self.register(node)

    def register(self, node: type[Node]) -> None:
        class_type = node.spec.class_type
        if class_type in self._classes and self._classes[class_type] is not node:
            raise ValueError(f"node type {class_type!r} is registered twice")
        self._classes[class_type] = node

    def get(self, class_type: str) -> type[Node] | None:
        return self._classes.get(class_type)

    def spec(self, class_type: str) -> NodeSpec | None:
        node = self._classes.get(class_type)
        return None if node is None else node.spec

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def object_info(self, ctx: NodeContext, class_type: str | None = None) -> dict:
        """GET /object_info (every class) or /object_info/{class_type}: {class_type: info};
        an unknown class gives {} as in ComfyUI."""
        wanted = list(self._classes) if class_type is None else [class_type]
        return {name: node_info(self._classes[name].spec, ctx) for name in wanted if name in self._classes}


def node_info(spec: NodeSpec, ctx: NodeContext) -> dict:
    def section(inputs) -> dict:
        # A bare [type] when nothing else is declared, as ComfyUI's ("MODEL",) serialises.
        return {i.name: [kind] if not options else [kind, options]
                for i in inputs for kind, options in [i.comfy_config(ctx)]}

    inputs = {"required": section(spec.required)}
    if spec.optional:
        inputs["optional"] = section(spec.optional)
    if spec.hidden:
        inputs["hidden"] = dict(spec.hidden)
    return {
        "input": inputs,
        "input_order": {key: list(value) for key, value in inputs.items()},
        "output": [o.type for o in spec.outputs],
        "output_is_list": [o.is_list for o in spec.outputs],
        "output_name": [o.name for o in spec.outputs],
        "name": spec.class_type,
        "display_name": spec.display_name,
        "description": spec.description,
        "python_module": CORE_PYTHON_MODULE,
        "category": spec.category,
        "output_node": spec.output_node,
    }


def default_registry() -> NodeRegistry:
    return NodeRegistry(BUILTIN_NODES)
