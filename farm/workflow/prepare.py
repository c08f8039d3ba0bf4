"""From what a user submits to a job the engine can run: parse (API or UI format), apply
overrides, validate, plan. Every entry point (CLI, Python API, HTTP) goes through here, so
bad input is stopped before anything is queued and reported in ComfyUI's shape."""
from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from farm.errors import FarmError, WorkflowFormatError
from farm.workflow.bounds import check_json
from farm.workflow.graph import Workflow, parse_workflow
from farm.workflow.plan import Plan, make_plan
from farm.workflow.ui_format import is_ui_format, ui_to_api
from farm.workflow.validate import ValidationResult, validate

if TYPE_CHECKING:  # the registry imports every node, and so torch: a Plan unpickles without it
    from farm.nodes.registry import NodeRegistry


class ValidationFailed(FarmError):
    """The workflow failed validation; `result.to_comfy()` is POST /prompt's 400 body."""

    def __init__(self, result: ValidationResult):
        self.result = result
        body = result.to_comfy()
        lines = [body["error"]["message"] + (": " + body["error"]["details"] if body["error"].get("details") else "")]
        for node_id, entry in body.get("node_errors", {}).items():
            for err in entry["errors"]:
                lines.append(f"  node {node_id} ({entry['class_type']}): {err['message']}: {err['details']}")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class PreparedPrompt:
    """A validated prompt: the API-format dict (what goes into history and the PNG), its
    parsed graph, and the plan of what to run."""

    prompt_id: str
    prompt: dict
    workflow: Workflow
    plan: Plan
    node_errors: dict  # errors of outputs that were dropped (ComfyUI answers 200 and runs the rest)


def load_json_file(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowFormatError(f"workflow file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkflowFormatError(f"{path} is not valid JSON: {exc}") from None


def parse_override(text: str) -> tuple[str, str, object]:
    """'3.seed=42' -> ("3", "seed", 42). The value is JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    node_id, dot, input_name = key.partition(".")
    if not sep or not dot or not node_id or not input_name:
        raise WorkflowFormatError(f"override {text!r} must look like NODE_ID.INPUT=VALUE, e.g. 3.seed=42")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node_id, input_name, value


def apply_overrides(prompt: dict, overrides: dict[str, object]) -> dict:
    """A copy of an API-format prompt with "NODE_ID.INPUT" keys set; an unknown node id is
    an error (a typo must not silently render the unchanged workflow)."""
    prompt = copy.deepcopy(prompt)
    for key, value in overrides.items():
        node_id, _, input_name = key.partition(".")
        if not input_name:
            raise WorkflowFormatError(f"override key {key!r} must look like NODE_ID.INPUT")
        node = prompt.get(node_id)
        if not isinstance(node, dict):
            raise WorkflowFormatError(f"override {key!r}: the workflow has no node {node_id!r}")
        node.setdefault("inputs", {})[input_name] = value
    return prompt


def to_api_format(obj: object, registry: NodeRegistry) -> dict:
    if isinstance(obj, dict) and is_ui_format(obj):
        return ui_to_api(obj, registry)
    if not isinstance(obj, dict):
        raise WorkflowFormatError("a workflow is a JSON object (API format) or a saved UI graph")
    return obj


def prepare(obj: object, registry: NodeRegistry, node_ctx, overrides: dict | None = None,
            prompt_id: str | None = None, partial_execution_targets: list[str] | None = None) -> PreparedPrompt:
    # The caps first: before the UI-format import or deepcopy recurse over it, and before
    # validation could echo a NaN into an error that JSON cannot carry.
    for value, where in ((obj, "prompt"), (overrides or {}, "overrides")):
        capped = check_json(value, node_ctx.limits, where)
        if capped is not None:
            raise ValidationFailed(ValidationResult([], {}, capped))
    prompt = apply_overrides(to_api_format(obj, registry), overrides or {})
    workflow = parse_workflow(prompt)
    result = validate(workflow, registry, node_ctx, partial_execution_targets=partial_execution_targets)
    if not result.ok:
        raise ValidationFailed(result)
    plan = make_plan(workflow, result.outputs_to_execute, registry, node_ctx)
    # plan.workflow holds the constants with their declared types ("5" -> 5 for an INT)
    return PreparedPrompt(prompt_id or str(uuid.uuid4()), prompt, plan.workflow, plan, result.to_comfy().get("node_errors", {}))
