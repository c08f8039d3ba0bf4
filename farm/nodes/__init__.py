"""Nodes: each class declares its interface as a NodeSpec; the registry maps class_type
names (ComfyUI's) to classes and describes them for /object_info."""
from farm.nodes.registry import NodeRegistry, default_registry
from farm.nodes.spec import (
           InputSpec,
           Limits,
           Node,
           NodeContext,
           NodeResult,
           NodeSpec,
           OutputSpec,
)

__all__ = ["InputSpec", "Limits", "Node", "NodeContext", "NodeRegistry", "NodeResult", "NodeSpec", "OutputSpec",
           "default_registry"]
