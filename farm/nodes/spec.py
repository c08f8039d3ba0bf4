"""The node contract: what a node declares (inputs, outputs, category) and what it is given.

A node class states its interface once, as a `NodeSpec`; validation, planning, the UI-format
import and /object_info all read that one declaration, so they cannot disagree.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence, Union

from farm.models.store import ModelFolders
from farm.records.images import ImageRef
from farm.records.paths import FarmPaths
from farm.settings import Limits, default_limits

# Types whose value is written in the workflow (a widget in ComfyUI's UI). Any other type
# names a value that only a link from another node's output can supply.
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
LINK_TYPES = frozenset({"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK"})

# ComfyUI's own maxima; a farm lowers them through `Limits` (farm.settings).
MAX_RESOLUTION = 16384
MAX_BATCH_SIZE = 4096
MAX_STEPS = 10000
MAX_SEED = 2**64 - 1

LIMIT_NAMES = frozenset(Limits.model_fields)


@dataclass(frozen=True)
class NodeContext:
    """What declarations may look at: the folders (for choice lists and file checks) and the
    server's limits. Nothing here loads a model."""

    models: ModelFolders
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    limits: Limits = field(default_factory=default_limits)  # None given: FARM_* and $FARM_CONFIG

    @classmethod
    def under(cls, root: Path, limits: Limits | None = None) -> "NodeContext":
        """The ComfyUI layout below one folder: models/, input/, output/, temp/."""
        root = Path(root)
        return cls(ModelFolders(root / "models"), root / "input", root / "output", root / "temp",
                   limits or default_limits())

    @classmethod
    def for_paths(cls, paths: FarmPaths, limits: Limits | None = None) -> "NodeContext":
        return cls(ModelFolders.for_paths(paths), paths.input, paths.output, paths.temp, limits or default_limits())


Choices = Union[tuple[str, ...], Callable[[NodeContext], Sequence[str]]]


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # a WIDGET_TYPES member or a link type such as "MODEL"
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | None = None
    choices: Choices | None = None  # COMBO only: fixed names, or computed from the folders
    multiline: bool = False
    control_after_generate: bool = False  # the UI stores a seed-control value after it
    batchable: bool = False  # may differ between jobs that run as one batch
    batchable_when: Callable[[Mapping[str, Any]], bool] | None = None  # ... or may where this holds
    # for the node's inputs (KSampler's steps: where the sampler takes one schedule per row)
    tooltip: str | None = None
    cap: str | None = None  # name of the `Limits` field that lowers `max`
    image_upload: bool = False  # the UI shows an upload button (LoadImage)

    def batchable_in(self, inputs: Mapping[str, Any]) -> bool:
        """May this input's constant differ between the jobs of one batch, given the node's inputs?"""
        return self.batchable or (self.batchable_when is not None and self.batchable_when(inputs))

    def __post_init__(self) -> None:
        if (self.type == "COMBO") != (self.choices is not None):
            raise ValueError(f"input {self.name!r}: choices are given exactly for COMBO inputs")
        if self.cap is not None and self.cap not in LIMIT_NAMES:
            raise ValueError(f"input {self.name!r}: cap {self.cap!r} is not one of {sorted(LIMIT_NAMES)}")

    @property
    def is_link(self) -> bool:
        return self.type not in WIDGET_TYPES

    def options(self, ctx: NodeContext) -> list[str]:
        """The allowed values of a COMBO input, as of now (folders change)."""
        if self.choices is None:
            return []
        return list(self.choices(ctx) if callable(self.choices) else self.choices)

    def effective_max(self, limits: Limits) -> float | None:
        if self.cap is None:
            return self.max
        cap = getattr(limits, self.cap)
        return cap if self.max is None else min(self.max, cap)

    def comfy_config(self, ctx: NodeContext) -> list:
        """ComfyUI's `(type, options)` pair: a COMBO's type is its list of choices; the
        options hold only what is declared, with `max` lowered by the server's limits."""
        kind: Any = self.options(ctx) if self.type == "COMBO" else self.type
        declared = {
            "default": self.default,
            "min": self.min,
            "max": self.effective_max(ctx.limits),
            "step": self.step,
            "round": self.round,
            "multiline": self.multiline or None,
            "control_after_generate": self.control_after_generate or None,
            "image_upload": self.image_upload or None,
            "tooltip": self.tooltip,
        }
        return [kind, {k: v for k, v in declared.items() if v is not None}]


@dataclass(frozen=True)
class OutputSpec:
    type: str
    name: str
    is_list: bool = False


@dataclass(frozen=True)
class NodeSpec:
    class_type: str
    display_name: str
    category: str
    required: tuple[InputSpec, ...]
    optional: tuple[InputSpec, ...] = ()
    hidden: Mapping[str, str] = field(default_factory=dict)  # name -> "PROMPT" | "EXTRA_PNGINFO" | ...
    outputs: tuple[OutputSpec, ...] = ()
    output_node: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        names = [i.name for i in self.inputs]
        if len(names) != len(set(names)):
            raise ValueError(f"{self.class_type}: input names repeat: {names}")

    @property
    def inputs(self) -> tuple[InputSpec, ...]:
        """Required then optional: ComfyUI's input order, which is also the UI's widget order."""
        return self.required + self.optional

    def input(self, name: str) -> InputSpec | None:
        return next((i for i in self.inputs if i.name == name), None)

    def is_required(self, name: str) -> bool:
        return any(i.name == name for i in self.required)

    @property
    def widget_inputs(self) -> tuple[InputSpec, ...]:
        return tuple(i for i in self.inputs if not i.is_link)


@dataclass
class NodeResult:
    """What an output node returns: its outputs (usually none) and the `ui` dict that goes
    to history and the `executed` event, e.g. {"images": [{filename, subfolder, type}]}."""

    outputs: tuple = ()
    ui: dict | None = None
    images: tuple[ImageRef, ...] = ()  # the files behind ui["images"], typed, for whoever waits on them


class Node:
    """Base of every node class. Subclasses set `spec`; the two class methods are optional
    hooks that see only constant inputs (linked values are not known before running)."""

    spec: ClassVar[NodeSpec]
    # input name -> models folder of the file it names (VAELoader: {"vae_name": "vae"}): the
    # plan lists those files, so a worker without them refuses the job before running it
    model_files: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def validate_inputs(cls, ctx: NodeContext, **constants: Any) -> str | None:
        """Return a message when the constants are unusable (ComfyUI's VALIDATE_INPUTS).
        Called only when every constant already passed the declared checks."""
        return None

    @classmethod
    def fingerprint(cls, ctx: NodeContext, **constants: Any) -> str | None:
        """A digest of whatever outside the workflow the result depends on (a file's bytes);
        it is folded into the node's signature so a changed file is not a cache hit."""
        return None


def hook_arguments(hook: Callable[..., Any], constants: Mapping[str, Any]) -> dict[str, Any] | None:
    """The keyword arguments a hook (`validate_inputs`, `fingerprint`) takes from the node's
    constants, or None when it names a value the workflow does not give as a constant (a
    linked or missing input): then the hook cannot judge it before the node runs."""
    params = inspect.signature(hook).parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "ctx"]
    if any(name not in constants for name in named):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return dict(constants)
    return {name: constants[name] for name in named}
