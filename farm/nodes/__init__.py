"""Nodes: each class declares its interface as a NodeSpec; the registry maps class_type
names (ComfyUI's) to classes and describes them for /object_info.

The registry imports every node, and so torch: NodeRegistry and default_registry are
imported on first use (PEP 562), so that farm.nodes.spec stays light (a queued job's Plan
needs it in the dispatcher, which never renders)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from farm.nodes.spec import (
           InputSpec,
           Limits,
           Node,
           NodeContext,
           NodeResult,
           NodeSpec,
           OutputSpec,
)

if TYPE_CHECKING:
    from farm.nodes.registry import NodeRegistry, default_registry

__all__ = ["InputSpec", "Limits", "Node", "NodeContext", "NodeRegistry", "NodeResult", "NodeSpec", "OutputSpec",
           "default_registry"]


def __getattr__(name: str):
    if name in ("NodeRegistry", "default_registry"):
        from farm.nodes import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
