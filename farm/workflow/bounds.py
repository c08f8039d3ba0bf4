"""Caps on a request's JSON, checked before anything reads it as a workflow: nesting depth,
numbers that are not finite, the length of each string and the bytes of all strings.

The walk is iterative (an explicit stack), so a 100,000-deep list is refused, not a
RecursionError; it runs before any code that would echo a value back (NaN and Infinity
are not JSON, so a 400 that quoted them could not be written) or recurse over it
(deepcopy, pydantic, the UI-format import).
"""
from __future__ import annotations

import math
from typing import Any

from farm.settings import Limits
from farm.workflow import errors as E
from farm.workflow.errors import ErrorType, PromptError


def check_json(value: Any, limits: Limits, where: str = "prompt", per_string: bool = True) -> PromptError | None:
    """The first cap `value` breaks, or None; `where` names `value` in the paths of errors
    ("" for a whole request body). `per_string` False skips the per-string length cap (for extra_data, whose saved UI graph may hold a long note)."""
    total_bytes = 0
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    while stack:
        item, path, depth = stack.pop()
        named = path or "the request"
        if isinstance(item, str):
            if per_string and len(item) > limits.max_prompt_chars:
                return E.prompt_cap_exceeded(
                    ErrorType.PROMPT_TEXT_TOO_LONG, "Prompt text too long",
                    f"{named} is {len(item):,} characters; the farm takes at most {limits.max_prompt_chars:,} "
                    f"per string (setting max_prompt_chars, FARM_MAX_PROMPT_CHARS)", path, limits.max_prompt_chars)
            total_bytes += len(item) if item.isascii() else len(item.encode("utf-8", "surrogatepass"))
            if total_bytes > limits.max_prompt_bytes:
                return E.prompt_cap_exceeded(
                    ErrorType.PROMPT_TOO_LARGE, "Prompt too large",
                    f"the strings of {where or 'the request'} add up to more than {limits.max_prompt_bytes:,} bytes (at {named}); "
                    f"setting max_prompt_bytes, FARM_MAX_PROMPT_BYTES", path, limits.max_prompt_bytes)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return E.prompt_cap_exceeded(
                    ErrorType.PROMPT_VALUE_NOT_FINITE, "Prompt value is not a finite number",
                    f"{named} is {_spell(item)}; give a finite number", path)
        elif isinstance(item, (dict, list, tuple)):
            if depth > limits.max_json_depth:
                return E.prompt_cap_exceeded(
                    ErrorType.PROMPT_TOO_DEEP, "Prompt nested too deeply",
                    f"{named} is nested more than {limits.max_json_depth} levels deep "
                    f"(setting max_json_depth, FARM_MAX_JSON_DEPTH)", path, limits.max_json_depth)
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str):
                        total_bytes += len(key)
                    stack.append((child, f"{path}.{_key(key)}" if path else _key(key), depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


def _key(key: object) -> str:
    text = str(key)
    return text if len(text) <= 40 else text[:40] + "..."


def _spell(number: float) -> str:
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
