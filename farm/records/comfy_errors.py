"""ComfyUI's error JSON, spelled in this one module: the error object of a refused prompt,
a node_errors entry, POST /prompt's 400 body, and the execution_error event's payload.

Clients match on these keys, so every layer that reports an error to a ComfyUI client
(validation, the engine, the dispatcher, the HTTP server) builds it here. It sits low, in
records, because the engine and the scheduler need it as much as the server does.
"""
from __future__ import annotations

from typing import Any

from farm.errors import FarmError, NodeExecutionError, one_line


def error_object(kind: str, message: str, details: str = "", extra_info: dict | None = None) -> dict:
    """{"type", "message", "details", "extra_info"}: the "error" of a refused prompt, and each
    entry of a node's "errors"."""
    return {"type": kind, "message": message, "details": details,
            "extra_info": {} if extra_info is None else extra_info}


def node_errors_entry(class_type: str, errors: list[dict], dependent_outputs: list[str]) -> dict:
    """node_errors[node_id]: a node's own errors and the outputs they keep from running."""
    return {"errors": list(errors), "dependent_outputs": list(dependent_outputs), "class_type": class_type}


def prompt_rejection(error: dict, node_errors: dict | None = None) -> dict:
    """POST /prompt's 400 body."""
    return {"error": error, "node_errors": {} if node_errors is None else node_errors}


def execution_error(node_id: str, node_type: str, executed: list[str], exception_message: str,
                    exception_type: str, current_inputs: dict | None = None,
                    current_outputs: list[str] | None = None) -> dict:
    """The execution_error event's body (without prompt_id and timestamp, which the sender
    adds). node_id and node_type are strings, as ComfyUI's always are ("" when the farm,
    not a node, failed). current_inputs: the failing node's inputs, each a one-item list;
    current_outputs: the nodes whose outputs were cached when the prompt started (what
    ComfyUI's execution.py sends now). The traceback stays empty: a stack from inside torch
    helps no user."""
    return {"node_id": node_id or "", "node_type": node_type or "", "executed": list(executed),
            "exception_message": exception_message, "exception_type": exception_type, "traceback": [],
            "current_inputs": dict(current_inputs or {}), "current_outputs": list(current_outputs or [])}


def node_failure(error: NodeExecutionError, executed: list[str], current_inputs: dict | None = None,
                 current_outputs: list[str] | None = None) -> dict:
    """execution_error for a node that raised while running (the engine's report)."""
    cause = error.cause  # its message in one line: never a stack from inside torch or Ray
    return execution_error(error.node_id, error.class_type, executed, one_line(cause, with_type=False),
                           _type_name(cause), current_inputs, current_outputs)


def farm_failure(message: str) -> dict:
    """execution_error for a failure the dispatcher decided (no node to blame: the workers
    died, the retries ran out)."""
    return execution_error("", "", [], message, _type_name(FarmError("")))


def input_value(value: Any) -> Any:
    """How an input shows in current_inputs: a number, string or bool as it is, anything
    else (a model, a tensor) by its type's name rather than its contents."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"<{type(value).__name__}>"


def _type_name(exc: Any) -> str:
    """As ComfyUI names an exception's type: module and qualified name, a builtin's bare."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
