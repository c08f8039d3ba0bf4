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
                    exception_type: str) -> dict:
    """The execution_error event's body (without prompt_id and timestamp, which the sender
    adds). The traceback stays empty: a stack from inside torch helps no user. node_id and
    node_type are strings, "" when no node is to blame: ComfyUI's frontend drops a whole
    jobs list whose execution_error has a null there."""
    return {"node_id": node_id, "node_type": node_type, "executed": list(executed),
            "exception_message": exception_message, "exception_type": exception_type, "traceback": [],
            "current_inputs": {}, "current_outputs": {}}


def node_failure(error: NodeExecutionError, executed: list[str]) -> dict:
    """execution_error for a node that raised while running (the engine's report)."""
    cause = error.cause  # its message in one line: never a stack from inside torch or Ray
    return execution_error(error.node_id, error.class_type, executed, one_line(cause, with_type=False),
                           _type_name(cause))


def farm_failure(message: str) -> dict:
    """execution_error for a failure the dispatcher decided (no node to blame: the workers
    died, the retries ran out)."""
    return execution_error("", "", [], message, f"{FarmError.__module__}.{FarmError.__qualname__}")


def _type_name(exc: Any) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__name__}"
