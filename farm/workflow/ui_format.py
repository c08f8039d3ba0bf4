"""ComfyUI's saved UI graph ({"nodes": [...], "links": [...]}) -> API format.

ComfyUI's server refuses the UI graph; its browser front end converts it. This module does
the same conversion with our node registry:
- widget values are stored in input order (required, then optional widget inputs); an
  input with `control_after_generate` (a seed) is followed by its control value ("fixed",
  "randomize", ...), which is not an input;
- an input fed by a link takes the link (a widget converted to an input included);
- Reroute passes its link through; PrimitiveNode gives its value to the inputs it feeds;
  Note and MarkdownNote are dropped;
- a muted node (mode 2) is dropped, and so are the links from it; a bypassed node (mode 4)
  hands each consumer its own input of the consumer's type, preferring the input in the
  same slot as the consumed output;
- a node type the registry does not know is kept, so that validation names it
  (missing_node_type).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from farm.errors import WorkflowFormatError

if TYPE_CHECKING:  # the registry imports every node, and so torch
    from farm.nodes.registry import NodeRegistry

MODE_MUTED = 2
MODE_BYPASSED = 4
DROPPED_TYPES = frozenset({"Note", "MarkdownNote"})
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})


def is_ui_format(obj: object) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("nodes"), list)


@dataclass(frozen=True)
class _UiLink:
    origin_id: str
    origin_slot: int


@dataclass(frozen=True)
class _UiNode:
    id: str
    type: str
    mode: int
    title: str | None
    inputs: list[dict]  # [{"name", "type", "link", "widget"?}]
    widgets_values: Any  # a list in input order; some nodes save a name -> value object

    def input_name(self, slot: dict) -> str:
        widget = slot.get("widget")
        return widget["name"] if isinstance(widget, Mapping) and "name" in widget else slot.get("name", "")


@dataclass(frozen=True)
class _Constant:
    value: Any


def ui_to_api(obj: Mapping, registry: NodeRegistry) -> dict:
    if not is_ui_format(obj):
        raise WorkflowFormatError('a UI-format workflow is an object with a "nodes" list')
    subgraphs = {s.get("id") for s in (obj.get("definitions") or {}).get("subgraphs", []) if isinstance(s, Mapping)}
    nodes = {n.id: n for n in (_parse_node(raw, i) for i, raw in enumerate(obj["nodes"]))}
    links = _parse_links(obj.get("links", []))
    resolver = _Resolver(nodes, links)
    prompt: dict[str, dict] = {}
    for node in nodes.values():
        if node.type in subgraphs or node.type.startswith(("workflow>", "workflow/")):
            raise WorkflowFormatError(f"node {node.id} is a subgraph or group node ({node.type}); the farm cannot "
                                      f"expand those: export the workflow from ComfyUI with 'Export (API)'")
        if node.type in DROPPED_TYPES or node.type in (REROUTE, PRIMITIVE):
            continue
        if node.mode in (MODE_MUTED, MODE_BYPASSED):
            continue
        prompt[node.id] = _api_node(node, registry, resolver)
    return dict(sorted(prompt.items(), key=lambda item: _id_key(item[0])))


def _api_node(node: _UiNode, registry: NodeRegistry, resolver: "_Resolver") -> dict:
    spec = registry.spec(node.type)
    inputs: dict[str, Any] = {}
    if spec is not None:
        values = node.widgets_values
        if isinstance(values, Mapping):
            inputs.update({w.name: _constant(values[w.name]) for w in spec.widget_inputs if w.name in values})
        else:
            position = 0
            for widget in spec.widget_inputs:
                if position >= len(values):
                    break
                inputs[widget.name] = _constant(values[position])
                position += 1
                if (widget.control_after_generate and position < len(values)
                        and isinstance(values[position], str) and values[position] in CONTROL_VALUES):
                    position += 1
    for slot in node.inputs:
        if slot.get("link") is None:
            continue
        source = resolver.source(slot["link"], slot.get("type"))
        name = node.input_name(slot)
        if isinstance(source, _Constant):
            inputs[name] = _constant(source.value)
        elif source is not None:
            inputs[name] = [source.origin_id, source.origin_slot]
    title = node.title or (spec.display_name if spec is not None else node.type)
    return {"inputs": inputs, "class_type": node.type, "_meta": {"title": title}}


class _Resolver:
    """Follows a link back through UI-only and bypassed nodes to what really feeds it."""

    def __init__(self, nodes: dict[str, _UiNode], links: dict[int, _UiLink]):
        self.nodes, self.links = nodes, links

    def source(self, link_id: Any, want_type: Any) -> _UiLink | _Constant | None:
        seen: set[Any] = set()
        while link_id is not None and link_id not in seen:
            seen.add(link_id)
            link = self.links.get(link_id)
            node = None if link is None else self.nodes.get(link.origin_id)
            if node is None or node.mode == MODE_MUTED:
                return None  # a dangling or muted source feeds nothing
            if node.type == PRIMITIVE:
                values = node.widgets_values
                return _Constant(values[0]) if isinstance(values, list) and values else None
            if node.type == REROUTE:
                link_id = node.inputs[0].get("link") if node.inputs else None
            elif node.mode == MODE_BYPASSED:
                link_id = self._bypass(node, link.origin_slot, want_type)
            else:
                return link
        return None

    @staticmethod
    def _bypass(node: _UiNode, slot: int, want_type: Any) -> Any:
        candidates = ([slot] if slot < len(node.inputs) else []) + list(range(len(node.inputs)))
        for index in candidates:
            entry = node.inputs[index]
            if entry.get("type") == want_type and entry.get("link") is not None:
                return entry["link"]
        return None


def _parse_node(raw: object, index: int) -> _UiNode:
    where = f"nodes[{index}]"
    if not isinstance(raw, Mapping) or "id" not in raw or not isinstance(raw.get("type"), str):
        raise WorkflowFormatError(f'{where}: a UI node is an object with "id" and "type"')
    inputs = raw.get("inputs") or []
    if not isinstance(inputs, list) or not all(isinstance(i, Mapping) for i in inputs):
        raise WorkflowFormatError(f"{where} (id {raw['id']}): inputs must be a list of objects")
    values = raw.get("widgets_values")
    if values is None:
        values = []
    if not isinstance(values, (list, Mapping)):
        raise WorkflowFormatError(f"{where} (id {raw['id']}): widgets_values must be a list")
    mode = raw.get("mode", 0)
    title = raw.get("title")
    return _UiNode(str(raw["id"]), raw["type"], mode if isinstance(mode, int) else 0,
                   title if isinstance(title, str) and title else None, [dict(i) for i in inputs], values)


def _parse_links(raw: object) -> dict[Any, _UiLink]:
    if not isinstance(raw, list):
        raise WorkflowFormatError('"links" must be a list')
    links: dict[Any, _UiLink] = {}
    for index, entry in enumerate(raw):
        # Two spellings: [id, origin_id, origin_slot, target_id, target_slot, type] and,
        # in newer saves, an object with those names.
        if isinstance(entry, list) and len(entry) >= 5:
            link_id, origin, slot = entry[0], entry[1], entry[2]
        elif isinstance(entry, Mapping) and {"id", "origin_id", "origin_slot"} <= entry.keys():
            link_id, origin, slot = entry["id"], entry["origin_id"], entry["origin_slot"]
        else:
            raise WorkflowFormatError(f"links[{index}]: expected [id, origin_id, origin_slot, target_id, target_slot, "
                                      f"type], got {entry!r}")
        if not isinstance(slot, int) or isinstance(slot, bool):
            raise WorkflowFormatError(f"links[{index}]: origin_slot must be a number, got {slot!r}")
        links[link_id] = _UiLink(str(origin), slot)
    return links


def _constant(value: Any) -> Any:
    """A list value is wrapped: a bare list in the API format means a link."""
    return {"__value__": value} if isinstance(value, list) else value


def _id_key(node_id: str) -> tuple:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)
