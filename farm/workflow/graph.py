"""ComfyUI's API format, parsed: node id -> NodeCall, each input a Link or a constant.

Only the shape is checked here (objects where objects belong). Whether node types exist,
links fit and values are in range is validation's job (validate.py), because ComfyUI
reports those per node in its own error format rather than refusing the whole request.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

from farm.errors import WorkflowFormatError


@dataclass(frozen=True)
class Link:
    """An input fed by output `output_index` of node `node_id`: the 2-list [id, index]."""

    node_id: str
    output_index: int

    def to_api(self) -> list:
        return [self.node_id, self.output_index]


@dataclass(frozen=True)
class MalformedLink:
    """A list that is not a valid [node_id, index] pair. Kept, not refused, so that validation
    reports it as ComfyUI does (bad_linked_input on that node)."""

    raw: tuple

    def to_api(self) -> list:
        return list(self.raw)


InputValue = Union[Link, MalformedLink, Any]  # anything else is a constant


@dataclass(frozen=True)
class NodeCall:
    node_id: str
    class_type: str | None  # None: the node has no class_type (validation: missing_node_type)
    inputs: Mapping[str, InputValue]
    title: str | None = None

    def links(self) -> dict[str, Link]:
        return {name: v for name, v in self.inputs.items() if isinstance(v, Link)}

    def constants(self) -> dict[str, Any]:
        return {name: v for name, v in self.inputs.items() if not isinstance(v, (Link, MalformedLink))}

    def to_api(self) -> dict:
        node: dict[str, Any] = {"inputs": {name: _value_to_api(v) for name, v in self.inputs.items()}}
        if self.class_type is not None:
            node["class_type"] = self.class_type
        if self.title is not None:
            node["_meta"] = {"title": self.title}
        return node


@dataclass(frozen=True)
class Workflow:
    nodes: Mapping[str, NodeCall]  # node id -> call, in the order the workflow lists them

    def to_api(self) -> dict:
        return {node_id: call.to_api() for node_id, call in self.nodes.items()}


def _value_to_api(value: InputValue) -> Any:
    if isinstance(value, (Link, MalformedLink)):
        return value.to_api()
    if isinstance(value, list):  # a bare list would read back as a link
        return {"__value__": value}
    return value


def parse_input(value: Any) -> InputValue:
    if isinstance(value, list):
        if (len(value) == 2 and isinstance(value[0], (str, int)) and not isinstance(value[0], bool)
                and isinstance(value[1], int) and not isinstance(value[1], bool)):
            return Link(str(value[0]), value[1])
        return MalformedLink(tuple(value))
    if isinstance(value, dict) and "__value__" in value:
        if not isinstance(value["__value__"], list):
            raise WorkflowFormatError(f'"__value__" wraps a constant list, got {type(value["__value__"]).__name__}')
        return list(value["__value__"])
    return value


def parse_workflow(obj: object) -> Workflow:
    """An API-format workflow -> Workflow; a wrong shape -> WorkflowFormatError naming it."""
    if not isinstance(obj, Mapping):
        raise WorkflowFormatError(f"a workflow is a JSON object mapping node ids to nodes, got {_kind(obj)}")
    if isinstance(obj.get("nodes"), list) and "links" in obj:
        raise WorkflowFormatError("this is a UI-format workflow (it has 'nodes' and 'links'); convert it with "
                                  "farm.workflow.ui_to_api or export it from ComfyUI with 'Export (API)'")
    if isinstance(obj.get("prompt"), Mapping) and "class_type" not in obj["prompt"]:
        raise WorkflowFormatError("this looks like a POST /prompt body; the workflow is the value of its 'prompt' key")
    nodes: dict[str, NodeCall] = {}
    for node_id, node in obj.items():
        if not isinstance(node_id, str):
            raise WorkflowFormatError(f"node ids are strings, got {node_id!r}")
        nodes[node_id] = _parse_node(node_id, node)
    return Workflow(nodes)


def _parse_node(node_id: str, node: object) -> NodeCall:
    where = f"node {node_id!r}"
    if not isinstance(node, Mapping):
        raise WorkflowFormatError(f'{where}: expected an object like {{"class_type": ..., "inputs": {{...}}}}, '
                                  f"got {_kind(node)}")
    class_type = node.get("class_type")
    if class_type is not None and not isinstance(class_type, str):
        raise WorkflowFormatError(f"{where}: class_type must be a string, got {_kind(class_type)}")
    inputs = node.get("inputs", {})
    if not isinstance(inputs, Mapping):
        raise WorkflowFormatError(f"{where}: inputs must be an object of input name -> value, got {_kind(inputs)}")
    meta = node.get("_meta", {})
    if not isinstance(meta, Mapping):
        raise WorkflowFormatError(f"{where}: _meta must be an object, got {_kind(meta)}")
    title = meta.get("title")
    if title is not None and not isinstance(title, str):
        raise WorkflowFormatError(f"{where}: _meta.title must be a string, got {_kind(title)}")
    parsed: dict[str, InputValue] = {}
    for name, value in inputs.items():
        try:
            parsed[str(name)] = parse_input(value)
        except WorkflowFormatError as exc:
            raise WorkflowFormatError(f"{where}, input {name!r}: {exc}") from None
    return NodeCall(node_id, class_type, parsed, title)


def load_workflow_file(path: str | Path, registry=None) -> Workflow:
    """Read a workflow file (API format, or a saved UI graph converted with `registry`,
    the default registry when None)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowFormatError(f"workflow file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise WorkflowFormatError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from None
    from farm.workflow.ui_format import (  # ui_format needs the node registry
        is_ui_format,
        ui_to_api,
    )

    if is_ui_format(obj):
        if registry is None:
            from farm.nodes.registry import default_registry

            registry = default_registry()
        obj = ui_to_api(obj, registry)
    return parse_workflow(obj)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
