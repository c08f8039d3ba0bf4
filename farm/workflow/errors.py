"""ComfyUI's validation errors as typed records: which problem, with what message.

The `type` strings and `message` texts are ComfyUI's wire format: clients match on them, so
they are reproduced exactly. `details` and `extra_info` carry what names the bad input. The
JSON itself is spelled by farm.records.comfy_errors.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from farm.records import comfy_errors


class ErrorType(str, Enum):
    # per input of a node
    REQUIRED_INPUT_MISSING = "required_input_missing"
    BAD_LINKED_INPUT = "bad_linked_input"
    RETURN_TYPE_MISMATCH = "return_type_mismatch"
    INVALID_INPUT_TYPE = "invalid_input_type"
    VALUE_SMALLER_THAN_MIN = "value_smaller_than_min"
    VALUE_BIGGER_THAN_MAX = "value_bigger_than_max"
    VALUE_NOT_IN_LIST = "value_not_in_list"
    CUSTOM_VALIDATION_FAILED = "custom_validation_failed"
    EXCEPTION_DURING_INNER_VALIDATION = "exception_during_inner_validation"
    DEPENDENCY_CYCLE = "dependency_cycle"
    # the whole prompt
    PROMPT_NO_OUTPUTS = "prompt_no_outputs"
    MISSING_NODE_TYPE = "missing_node_type"
    PROMPT_OUTPUTS_FAILED_VALIDATION = "prompt_outputs_failed_validation"
    NO_PROMPT = "no_prompt"
    INVALID_PROMPT_ID = "invalid_prompt_id"
    # caps on the request's JSON (farm.settings.Limits; ComfyUI has none of these)
    PROMPT_TOO_DEEP = "prompt_too_deep"
    PROMPT_TEXT_TOO_LONG = "prompt_text_too_long"
    PROMPT_TOO_LARGE = "prompt_too_large"
    PROMPT_VALUE_NOT_FINITE = "prompt_value_not_finite"


@dataclass(frozen=True)
class ComfyError:
    type: ErrorType
    message: str
    details: str = ""
    extra_info: dict[str, Any] = field(default_factory=dict)

    def to_comfy(self) -> dict:
        return comfy_errors.error_object(self.type.value, self.message, self.details, self.extra_info)


class InputError(ComfyError):
    """One problem with one input of one node (an entry of node_errors[id]["errors"])."""


class PromptError(ComfyError):
    """The reason a whole prompt is refused (the "error" of POST /prompt's 400 body)."""


@dataclass
class NodeErrors:
    """node_errors[node_id]: the node's own errors and the outputs they keep from running."""

    class_type: str
    errors: list[InputError]
    dependent_outputs: list[str] = field(default_factory=list)

    def to_comfy(self) -> dict:
        return comfy_errors.node_errors_entry(self.class_type, [e.to_comfy() for e in self.errors],
                                              self.dependent_outputs)


# -- per-input errors; `config` is ComfyUI's [type, options] of the input -------------------

def required_input_missing(name: str) -> InputError:
    return InputError(ErrorType.REQUIRED_INPUT_MISSING, "Required input is missing", name, {"input_name": name})


def bad_linked_input(name: str, config: list, received: Any) -> InputError:
    return InputError(ErrorType.BAD_LINKED_INPUT, "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                      name, {"input_name": name, "input_config": config, "received_value": received})


def return_type_mismatch(name: str, config: list, received_type: str, input_type: Any, link: list) -> InputError:
    return InputError(ErrorType.RETURN_TYPE_MISMATCH, "Return type mismatch between linked nodes",
                      f"{name}, received_type({received_type}) mismatch input_type({input_type})",
                      {"input_name": name, "input_config": config, "received_type": received_type,
                       "linked_node": link})


def invalid_input_type(name: str, config: list, input_type: str, received: Any, reason: str) -> InputError:
    return InputError(ErrorType.INVALID_INPUT_TYPE, f"Failed to convert an input value to a {input_type} value",
                      f"{name}, {received}, {reason}",
                      {"input_name": name, "input_config": config, "received_value": received,
                       "exception_message": reason})


def value_smaller_than_min(name: str, config: list, received: Any, minimum: Any) -> InputError:
    return InputError(ErrorType.VALUE_SMALLER_THAN_MIN, f"Value {received} smaller than min of {minimum}", name,
                      {"input_name": name, "input_config": config, "received_value": received})


def value_bigger_than_max(name: str, config: list, received: Any, maximum: Any, limit: str | None = None) -> InputError:
    extra = {"input_name": name, "input_config": config, "received_value": received}
    if limit is not None:  # the cap is this server's setting, not the node's own maximum
        extra["limit"] = limit
    return InputError(ErrorType.VALUE_BIGGER_THAN_MAX, f"Value {received} bigger than max of {maximum}", name, extra)


# ComfyUI leaves long choice lists (e.g. hundreds of model files) out of the error.
LONG_LIST = 20


def value_not_in_list(name: str, config: list, received: Any, options: list) -> InputError:
    if len(options) > LONG_LIST:
        listed, config = f"(list of length {len(options)})", None
    else:
        listed = str(options)
    return InputError(ErrorType.VALUE_NOT_IN_LIST, "Value not in list", f"{name}: '{received}' not in {listed}",
                      {"input_name": name, "input_config": config, "received_value": received})


def custom_validation_failed(name: str, reason: str) -> InputError:
    return InputError(ErrorType.CUSTOM_VALIDATION_FAILED, "Custom validation failed for node", f"{name} - {reason}",
                      {"input_name": name})


def exception_during_inner_validation(name: str, config: list | None, exc: BaseException,
                                      link: list | None = None) -> InputError:
    extra = {"input_name": name, "input_config": config, "exception_message": str(exc),
             "exception_type": _type_name(exc), "traceback": []}
    if link is not None:
        extra["linked_node"] = link
    return InputError(ErrorType.EXCEPTION_DURING_INNER_VALIDATION, "Exception when validating inner node",
                      str(exc), extra)


def dependency_cycle(name: str, config: list, link: list, cycle: list[str]) -> InputError:
    return InputError(ErrorType.DEPENDENCY_CYCLE, "Dependency cycle detected",
                      f"{name}: nodes {' -> '.join(cycle)} feed each other",
                      {"input_name": name, "input_config": config, "linked_node": link, "cycle_nodes": cycle})


# -- errors of the whole prompt ------------------------------------------------------------

def prompt_no_outputs() -> PromptError:
    return PromptError(ErrorType.PROMPT_NO_OUTPUTS, "Prompt has no outputs", "", {})


def missing_node_type(node_id: str, class_type: str | None, title: str | None) -> PromptError:
    if class_type is None:
        extra = {"node_id": node_id, "class_type": None, "node_title": title}
        message = (f"Node '{title or f'ID #{node_id}'}' has no class_type. The workflow may be corrupted or a "
                   f"custom node is missing.")
    else:
        extra = {"node_id": node_id, "class_type": class_type, "node_title": title or class_type}
        message = f"Node '{title or class_type}' not found. The custom node may not be installed."
    return PromptError(ErrorType.MISSING_NODE_TYPE, message, f"Node ID '#{node_id}'", extra)


def prompt_outputs_failed_validation(output_errors: list[InputError]) -> PromptError:
    details = "\n".join(f"{e.message}: {e.details}" for e in output_errors)
    return PromptError(ErrorType.PROMPT_OUTPUTS_FAILED_VALIDATION, "Prompt outputs failed validation", details, {})


def no_prompt() -> PromptError:
    return PromptError(ErrorType.NO_PROMPT, "No prompt provided", "No prompt provided", {})


def invalid_prompt_id(prompt_id: Any) -> PromptError:
    return PromptError(ErrorType.INVALID_PROMPT_ID, "prompt_id must be a valid UUID",
                       f"got {prompt_id!r}; send a lowercase hyphenated UUID, or leave prompt_id out and the "
                       f"server makes one", {})


def is_canonical_uuid(value: object) -> bool:
    """A UUID written exactly as str(uuid.UUID(...)) writes it (lowercase, hyphenated)."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def check_prompt_id(prompt_id: Any) -> PromptError | None:
    """None when `prompt_id` is a canonical (lowercase, hyphenated) UUID string."""
    return None if is_canonical_uuid(prompt_id) else invalid_prompt_id(prompt_id)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


# -- caps on the prompt's JSON (farm.settings.Limits; ComfyUI has none of these) ------------


def prompt_cap_exceeded(kind: ErrorType, message: str, details: str, path: str, limit: int | None = None) -> PromptError:
    """`path` names where in the request ("prompt.6.inputs.text"); the bad value itself is
    never echoed (NaN is not JSON, a 64 MB string is not a message)."""
    extra: dict[str, Any] = {"path": path}
    if limit is not None:
        extra["limit"] = limit
    return PromptError(kind, message, details, extra)
