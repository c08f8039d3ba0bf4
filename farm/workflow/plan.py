"""What the engine runs for a validated workflow: the order, and a signature per node.

A node's signature is the sha256 of its class_type, its constant inputs and, for each
linked input, the signature of the node feeding it and the output index. Node ids are not
part of it, so the same subgraph under other ids (another job, a renumbered copy) has the
same signatures: that is what lets the output cache and cross-job batching find it.
"""
from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from farm.errors import NodeExecutionError, WorkflowFormatError
from farm.nodes.spec import NodeContext, hook_arguments
from farm.workflow.graph import Link, Workflow, parse_workflow
from farm.workflow.validate import normalize

if TYPE_CHECKING:  # the registry imports every node, and so torch: a Plan unpickles without it
    from farm.nodes.registry import NodeRegistry

# Stands in for a batchable constant in batch signatures.
_BATCHED = {"batched": True}
# The input that names a checkpoint, in every ComfyUI checkpoint loader.
CHECKPOINT_INPUT = "ckpt_name"
# The input that names a LoRA (LoraLoader, LoraLoaderModelOnly), and its strengths.
LORA_INPUT = "lora_name"


@dataclass(frozen=True)
class Plan:
    workflow: Workflow  # normalized: declared inputs only, constants of their declared types
    outputs: tuple[str, ...]  # the output nodes asked for
    order: tuple[str, ...]  # ancestors of `outputs` (and they), each after all it depends on
    signatures: dict[str, str]  # node id -> input signature (the output cache key)
    batch_signatures: dict[str, str]  # node id -> signature with batchable constants blanked
    batch_key: str  # equal for two plans that differ only in batchable constants
    checkpoints: tuple[str, ...]  # ckpt_name values used, first use first (for placement)
    loras: tuple[tuple[str, float | None, float | None], ...] = ()  # (lora_name, strength_model,
    # strength_clip) per LoRA loader, in run order (placement: records.residency.LoraSet)
    image_size: tuple[int, int] | None = None  # largest (width, height) in pixels a node sets
    # (EmptyLatentImage, LatentUpscale ...): what the batch sizer budgets memory for
    images: int = 1  # images per prompt (the largest batch_size a node sets)
    # (models folder, name) of the other files its nodes name (Node.model_files), first use
    # first: a worker checks it has them
    model_files: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict:
        """The plan as JSON, for the durable queue: a job keeps the plan it was validated
        with across a dispatcher restart instead of being planned again."""
        return {"workflow": self.workflow.to_api(), "outputs": list(self.outputs), "order": list(self.order),
                "signatures": self.signatures, "batch_signatures": self.batch_signatures,
                "batch_key": self.batch_key, "checkpoints": list(self.checkpoints),
                "loras": [list(entry) for entry in self.loras],
                "image_size": list(self.image_size) if self.image_size else None, "images": self.images,
                "model_files": [list(f) for f in self.model_files]}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        return cls(parse_workflow(data["workflow"]), tuple(data["outputs"]), tuple(data["order"]),
                   dict(data["signatures"]), dict(data["batch_signatures"]), data["batch_key"],
                   tuple(data["checkpoints"]),
                   # a plan stored before placement read LoRAs and sizes: none, unknown
                   tuple((n, m, c) for n, m, c in data.get("loras", ())),
                   tuple(data["image_size"]) if data.get("image_size") else None, data.get("images", 1),
                   tuple(tuple(f) for f in data.get("model_files", ())))


def make_plan(workflow: Workflow, outputs_to_execute: Sequence[str], registry: NodeRegistry,
              ctx: NodeContext) -> Plan:
    """Plan a workflow that passed validation for these outputs."""
    workflow = normalize(workflow, registry)
    outputs = tuple(outputs_to_execute)
    order = _topological_order(workflow, outputs)
    signatures: dict[str, str] = {}
    batch_signatures: dict[str, str] = {}
    checkpoints: list[str] = []
    model_files: list[tuple[str, str]] = []
    for node_id in order:
        call = workflow.nodes[node_id]
        node_cls = registry.get(call.class_type)
        fingerprint = _fingerprint(node_id, call.class_type, node_cls, ctx, call.constants())
        full, batch = [], []
        for inp in node_cls.spec.inputs:
            if inp.name not in call.inputs:
                continue
            value = call.inputs[inp.name]
            if isinstance(value, Link):
                full.append([inp.name, {"from": signatures[value.node_id], "output": value.output_index}])
                batch.append([inp.name, {"from": batch_signatures[value.node_id], "output": value.output_index}])
            else:
                full.append([inp.name, {"value": value}])
                batch.append([inp.name, _BATCHED if inp.batchable_in(call.inputs) else {"value": value}])
        signatures[node_id] = _digest([call.class_type, fingerprint, full])
        batch_signatures[node_id] = _digest([call.class_type, fingerprint, batch])
        name = call.inputs.get(CHECKPOINT_INPUT)
        if isinstance(name, str) and name not in checkpoints:
            checkpoints.append(name)
        for input_name, folder in node_cls.model_files.items():
            file = (folder, call.inputs.get(input_name))
            if isinstance(file[1], str) and file not in model_files:
                model_files.append(file)
    batch_key = _digest(sorted(batch_signatures[o] for o in outputs))
    return Plan(workflow, outputs, order, signatures, batch_signatures, batch_key, tuple(checkpoints),
                *_placement_facts(workflow, order), model_files=tuple(model_files))


def _placement_facts(workflow: Workflow, order: tuple[str, ...]):
    """What placement and the batch sizer read off a plan: its LoRA set (in run order), the
    largest image size a node sets, and the most images per prompt."""
    loras: list[tuple[str, float | None, float | None]] = []
    image_size: tuple[int, int] | None = None
    images = 1
    for node_id in order:
        inputs = workflow.nodes[node_id].inputs
        lora = inputs.get(LORA_INPUT)
        if isinstance(lora, str):
            loras.append((lora, _strength(inputs.get("strength_model", 1.0)), _strength(inputs.get("strength_clip"))))
        width, height, count = (inputs.get(k) for k in ("width", "height", "batch_size"))
        if _is_int(width) and _is_int(height) and (image_size is None or width * height > image_size[0] * image_size[1]):
            image_size = (width, height)
        if _is_int(count):
            images = max(images, count)
    return tuple(loras), image_size, images


def _strength(value: Any) -> float | None:
    """A LoRA strength as placement compares it; None when absent or fed by a link."""
    return float(value) if isinstance(value, (int, float)) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _topological_order(workflow: Workflow, outputs: tuple[str, ...]) -> tuple[str, ...]:
    """Kahn's algorithm over the ancestors of `outputs`; among ready nodes the one listed
    first in the workflow goes first, so the order does not depend on hashing."""
    needed: set[str] = set()
    frontier = list(outputs)
    while frontier:
        node_id = frontier.pop()
        if node_id in needed:
            continue
        if node_id not in workflow.nodes:
            raise WorkflowFormatError(f"node {node_id!r} is not in the workflow; validate it before planning")
        needed.add(node_id)
        frontier.extend(link.node_id for link in workflow.nodes[node_id].links().values())
    position = {node_id: i for i, node_id in enumerate(workflow.nodes)}
    waiting = {n: {link.node_id for link in workflow.nodes[n].links().values()} for n in needed}
    consumers: dict[str, list[str]] = {}  # node id -> nodes that wait for it
    for node_id, sources in waiting.items():
        for source in sources:
            consumers.setdefault(source, []).append(node_id)
    ready = [(position[n], n) for n, sources in waiting.items() if not sources]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        for consumer in consumers.get(node_id, []):
            waiting[consumer].discard(node_id)
            if not waiting[consumer]:
                heapq.heappush(ready, (position[consumer], consumer))
    if len(order) != len(needed):
        stuck = sorted(set(needed) - set(order), key=position.get)
        raise WorkflowFormatError(f"dependency cycle among nodes {', '.join(stuck)}; validate before planning")
    return tuple(order)


def _fingerprint(node_id: str, class_type: str, node_cls, ctx: NodeContext, constants: dict[str, Any]) -> str | None:
    arguments = hook_arguments(node_cls.fingerprint, constants)
    if arguments is None:
        return None
    try:
        return node_cls.fingerprint(ctx, **arguments)
    except Exception as exc:  # e.g. the input image was deleted after validation
        raise NodeExecutionError(node_id, class_type, exc) from exc


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
