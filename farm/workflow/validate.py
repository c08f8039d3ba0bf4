"""ComfyUI's prompt validation, with its error shapes (see errors.py).

As in ComfyUI, validation starts from each requested output node and walks up its links:
a node's own problems are reported on that node, a node downstream of a broken one fails
without errors of its own, and each broken node lists every output it keeps from running
(dependent_outputs). Outputs that pass are still run when others fail (HTTP 200 with
node_errors); only when none passes is the prompt refused (400).

The walk is iterative (a prompt may be a long chain) and a cycle is reported on the input
that closes it instead of recursing forever.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from farm.nodes.spec import InputSpec, NodeContext, NodeSpec, hook_arguments
from farm.records import comfy_errors
from farm.workflow import errors as E
from farm.workflow.errors import InputError, NodeErrors, PromptError
from farm.workflow.graph import Link, MalformedLink, NodeCall, Workflow

if TYPE_CHECKING:  # the registry imports every node, and so torch: a Plan unpickles without it
    from farm.nodes.registry import NodeRegistry


@dataclass(frozen=True)
class ValidationResult:
    outputs_to_execute: list[str]  # output node ids that passed, in workflow order
    node_errors: dict[str, NodeErrors]  # node id -> its errors and the outputs they block
    error: PromptError | None  # set when nothing can run: POST /prompt answers 400
    workflow: Workflow | None = None  # constants converted to their declared types (see `normalize`)

    @property
    def ok(self) -> bool:
        return self.error is None

    def node_errors_comfy(self) -> dict:
        return {node_id: entry.to_comfy() for node_id, entry in self.node_errors.items()}

    def to_comfy(self) -> dict:
        """POST /prompt's 400 body {"error", "node_errors"}; when the prompt is accepted,
        only {"node_errors"} (what a 200 answer carries besides prompt_id and number)."""
        if self.error is not None:
            return comfy_errors.prompt_rejection(self.error.to_comfy(), self.node_errors_comfy())
        return {"node_errors": self.node_errors_comfy()}


@dataclass
class _Checked:
    """One node's own verdict: its errors and the links worth following upward."""

    call: NodeCall
    errors: list[InputError]
    edges: list[tuple[str, Link]]  # (input name, link) whose source exists and whose type fits


def validate(workflow: Workflow, registry: NodeRegistry, ctx: NodeContext,
             partial_execution_targets: Sequence[str] | None = None) -> ValidationResult:
    # 1. Every node must name a known class, reachable from an output or not (as ComfyUI).
    for node_id, call in workflow.nodes.items():
        if call.class_type is None or call.class_type not in registry:
            return ValidationResult([], {}, E.missing_node_type(node_id, call.class_type, call.title))

    # 2. The outputs asked for: every output node, or those named by partial execution.
    targets = None if partial_execution_targets is None else {str(t) for t in partial_execution_targets}
    outputs = [node_id for node_id, call in workflow.nodes.items()
               if registry.spec(call.class_type).output_node and (targets is None or node_id in targets)]
    if not outputs:
        return ValidationResult([], {}, E.prompt_no_outputs())

    # 3. Check each node reachable from an output once, then find cycles among them.
    checker = _NodeChecker(workflow, registry, ctx)
    checked: dict[str, _Checked] = {}
    pending = list(reversed(outputs))
    while pending:
        node_id = pending.pop()
        if node_id not in checked:
            checked[node_id] = checker.check(node_id)
            pending.extend(link.node_id for _, link in reversed(checked[node_id].edges))
    _report_cycles(checked, outputs, checker)

    # 4. A node is runnable when it and all its ancestors are clean.
    broken = _downstream_of({n for n, c in checked.items() if c.errors}, checked)
    good = [o for o in outputs if o not in broken]
    node_errors: dict[str, NodeErrors] = {}
    for output in outputs:
        if output in broken:
            for node_id in _ancestry(output, checked):
                if checked[node_id].errors:
                    entry = node_errors.setdefault(
                        node_id, NodeErrors(checked[node_id].call.class_type, checked[node_id].errors))
                    entry.dependent_outputs.append(output)
    error = None
    if not good:
        error = E.prompt_outputs_failed_validation([e for o in outputs for e in checked[o].errors])
    return ValidationResult(good, node_errors, error, normalize(workflow, registry))


class _NodeChecker:
    """The per-node checks of ComfyUI's validate_inputs, ancestors aside."""

    def __init__(self, workflow: Workflow, registry: NodeRegistry, ctx: NodeContext):
        self.workflow, self.registry, self.ctx = workflow, registry, ctx
        self._configs: dict[tuple[str, str], list] = {}  # (class_type, input) -> [type, options]

    def config(self, spec: NodeSpec, inp: InputSpec) -> list:
        """ComfyUI's input_config; a COMBO's type is its current choice list (computed once
        per validation, since listing a models folder costs a directory walk)."""
        key = (spec.class_type, inp.name)
        if key not in self._configs:
            self._configs[key] = inp.comfy_config(self.ctx)
        return self._configs[key]

    def check(self, node_id: str) -> _Checked:
        call = self.workflow.nodes[node_id]
        spec = self.registry.spec(call.class_type)
        result = _Checked(call, [], [])
        constants: dict[str, Any] = {}
        constants_ok = True
        for inp in spec.inputs:
            if inp.name not in call.inputs:
                if spec.is_required(inp.name):
                    result.errors.append(E.required_input_missing(inp.name))
                continue
            try:
                config = self.config(spec, inp)
            except Exception as exc:  # a choice list that cannot be computed (folder unreadable)
                result.errors.append(E.exception_during_inner_validation(inp.name, None, exc))
                constants_ok = False
                continue
            value = call.inputs[inp.name]
            if isinstance(value, Link):
                error = self._check_link(inp, config, value)
                if error is None:
                    result.edges.append((inp.name, value))
                else:
                    result.errors.append(error)
            elif isinstance(value, MalformedLink):
                result.errors.append(E.bad_linked_input(inp.name, config, list(value.raw)))
            else:
                error, coerced = self._check_constant(inp, config, value)
                if error is None:
                    constants[inp.name] = coerced
                else:
                    result.errors.append(error)
                    constants_ok = False
        if constants_ok:
            result.errors.extend(self._custom_validation(call, constants))
        return result

    def _check_link(self, inp: InputSpec, config: list, link: Link) -> InputError | None:
        source = self.workflow.nodes.get(link.node_id)
        if source is None:
            problem = LookupError(f"input {inp.name!r} links to node {link.node_id!r}, which is not in the workflow")
            return E.exception_during_inner_validation(inp.name, config, problem, link.to_api())
        outputs = self.registry.spec(source.class_type).outputs
        if not 0 <= link.output_index < len(outputs):
            problem = LookupError(f"input {inp.name!r} links to output {link.output_index} of node {link.node_id!r} "
                                  f"({source.class_type}), which has {len(outputs)} output(s)")
            return E.exception_during_inner_validation(inp.name, config, problem, link.to_api())
        received = outputs[link.output_index].type
        if not types_match(received, inp.type):
            return E.return_type_mismatch(inp.name, config, received, config[0], link.to_api())
        return None

    def _check_constant(self, inp: InputSpec, config: list, value: Any) -> tuple[InputError | None, Any]:
        if inp.is_link:  # a MODEL, LATENT, ... can only come from another node
            return E.bad_linked_input(inp.name, config, value), None
        try:
            value = coerce_constant(inp, value)
        except Exception as exc:
            return E.invalid_input_type(inp.name, config, inp.type, value, str(exc)), None
        if inp.min is not None and value < inp.min:
            return E.value_smaller_than_min(inp.name, config, value, inp.min), None
        maximum = inp.effective_max(self.ctx.limits)
        if maximum is not None and value > maximum:
            lowered = inp.cap if inp.max is None or maximum < inp.max else None
            return E.value_bigger_than_max(inp.name, config, value, maximum, lowered), None
        if inp.type == "COMBO" and value not in config[0]:
            return E.value_not_in_list(inp.name, config, value, config[0]), None
        return None, value

    def _custom_validation(self, call: NodeCall, constants: dict[str, Any]) -> list[InputError]:
        hook = self.registry.get(call.class_type).validate_inputs
        arguments = hook_arguments(hook, constants)
        if arguments is None:
            return []
        names = list(arguments) or [""]
        try:
            reason = hook(self.ctx, **arguments)
        except Exception as exc:
            return [E.exception_during_inner_validation(names[0], None, exc)]
        if not reason:
            return []
        return [E.custom_validation_failed(name, str(reason)) for name in names]


def coerce_constant(inp: InputSpec, value: Any) -> Any:
    """ComfyUI's conversions: int("5") -> 5, int(5.7) -> 5, float for FLOAT, str for STRING;
    anything else is refused by the caller as invalid_input_type."""
    if inp.type == "INT":
        return int(value)
    if inp.type == "FLOAT":
        value = float(value)
        if math.isnan(value):  # NaN passes every min/max comparison; refuse it here
            raise ValueError("NaN is not a number")
        return value
    if inp.type == "STRING":
        return str(value)
    if inp.type == "BOOLEAN":
        return bool(value)
    return value


def types_match(received: str, expected: str) -> bool:
    """ComfyUI's rule: equal, "*" on either side, or comma-separated unions that overlap.
    A COMBO input takes a link only from a COMBO (or "*") output."""
    if received == expected or "*" in (received, expected):
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def normalize(workflow: Workflow, registry: NodeRegistry) -> Workflow:
    """The workflow as nodes run it: only declared inputs, constants converted to their
    declared types where they convert (so "5" and 5 give one signature and one value)."""
    nodes = {}
    for node_id, call in workflow.nodes.items():
        spec = registry.spec(call.class_type) if call.class_type is not None else None
        if spec is None:
            nodes[node_id] = call
            continue
        inputs = {}
        for inp in spec.inputs:
            if inp.name in call.inputs:
                value = call.inputs[inp.name]
                if not isinstance(value, (Link, MalformedLink)) and not inp.is_link:
                    try:
                        value = coerce_constant(inp, value)
                    except Exception:
                        pass  # left as given; validation has reported it
                inputs[inp.name] = value
        nodes[node_id] = NodeCall(node_id, call.class_type, inputs, call.title)
    return Workflow(nodes)


def _report_cycles(checked: dict[str, _Checked], outputs: list[str], checker: _NodeChecker) -> None:
    """Depth-first search over the followed links; the link that returns to a node still on
    the path closes a cycle and gets the dependency_cycle error."""
    done: set[str] = set()
    for root in outputs:
        if root in done:
            continue
        path: list[str] = [root]
        on_path = {root}
        iters = [iter(list(checked[root].edges))]
        while iters:
            step = next(iters[-1], None)
            if step is None:
                iters.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
                continue
            name, link = step
            target = link.node_id
            if target in on_path:
                owner = checked[path[-1]]
                owner.edges.remove((name, link))
                spec = checker.registry.spec(owner.call.class_type)
                config = checker.config(spec, spec.input(name))
                cycle = path[path.index(target):]
                owner.errors.append(E.dependency_cycle(name, config, link.to_api(), cycle))
            elif target not in done:
                path.append(target)
                on_path.add(target)
                iters.append(iter(list(checked[target].edges)))


def _downstream_of(broken: set[str], checked: dict[str, _Checked]) -> set[str]:
    consumers: dict[str, list[str]] = {}  # node id -> nodes that link to it
    for node_id, c in checked.items():
        for _, link in c.edges:
            consumers.setdefault(link.node_id, []).append(node_id)
    result, frontier = set(broken), list(broken)
    while frontier:
        for consumer in consumers.get(frontier.pop(), []):
            if consumer not in result:
                result.add(consumer)
                frontier.append(consumer)
    return result


def _ancestry(output: str, checked: dict[str, _Checked]) -> list[str]:
    """The output and every node it reaches through followed links, nearest first."""
    seen, order, frontier = {output}, [output], [output]
    while frontier:
        for _, link in checked[frontier.pop(0)].edges:
            if link.node_id not in seen:
                seen.add(link.node_id)
                order.append(link.node_id)
                frontier.append(link.node_id)
    return order
