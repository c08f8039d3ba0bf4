"""Typed errors. Each carries what the user needs to fix the input; the CLI and the HTTP
server translate them to a message or a ComfyUI-shaped JSON error in one place each."""
from __future__ import annotations

import re


class FarmError(Exception):
    """Base class: the message is written for the person who submitted the work."""


class InvalidInputError(FarmError, ValueError):
    """A value handed to the farm's library (a sampler or scheduler name, steps, cfg,
    conditioning that does not fit, a text encoder's parts) that cannot work. Also a
    ValueError, as Python's own argument checks are, so callers catching that keep working."""


class ConfigError(FarmError):
    """A setting of the farm itself (its queue file, a simulator trace) that cannot work."""


class WorkflowFormatError(FarmError):
    """The workflow is not a ComfyUI graph at all (bad JSON, wrong shape)."""


class CheckpointError(FarmError):
    """A model file cannot be found or read."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle-based model file (.ckpt, .pt, .bin, .pth): loading it would run its code."""


class UnsupportedCheckpointError(CheckpointError):
    """A safetensors file whose architecture farm does not know."""


class Interrupted(FarmError):
    """The running prompt was interrupted by the user."""


class NodeExecutionError(FarmError):
    """A node raised while running; names the node so the user knows where."""

    def __init__(self, node_id: str, class_type: str, cause: BaseException):
        self.node_id, self.class_type, self.cause = node_id, class_type, cause
        super().__init__(f"node {node_id} ({class_type}) failed: {one_line(cause)}")


class FarmUnavailable(FarmError):
    """The farm's actors are not there (or not back after a restart). Raised by
    actors.cluster; here so that code below the Ray side can name it."""


class QueueLocked(FarmUnavailable):
    """Another process holds the queue database locked: a new prompt is refused (not queued,
    so nothing is lost; send it again), while the farm's own bookkeeping waits the lock out."""


class DuplicatePromptError(FarmError):
    """A prompt_id that is already queued or in history (POST /prompt answers 409)."""


class UnknownJobError(FarmError):
    """A queue operation names a prompt_id (or worker) that the dispatcher does not know."""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ONE_LINE_LIMIT = 300


def one_line(exc: BaseException, limit: int = ONE_LINE_LIMIT, with_type: bool = True) -> str:
    """What went wrong, as one line for history, the websocket and JobFailed: the cause a
    Ray wrapper carries (a RayTaskError's text is the remote traceback), no ANSI colours, no
    newlines. The traceback itself belongs in the log. `with_type` False leaves out the
    exception's class name (ComfyUI's exception_message carries it separately)."""
    seen = 0
    # RayTaskError / RayActorError keep the remote exception in `.cause` (duck-typed: farm/
    # imports no ray); a FarmError's own message already names the node or file
    while _from_ray(exc) and isinstance(getattr(exc, "cause", None), BaseException) and seen < 8:
        exc, seen = exc.cause, seen + 1
    text = _ANSI.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if _from_ray(exc) or any(line.startswith(("Traceback (most recent call last)", "ray::")) for line in lines):
        # a traceback in the message itself: its last line is the error ("ValueError: ...")
        lines = lines[-1:]
        text = lines[0] if lines else type(exc).__name__
    else:
        text = " ".join(lines)
        if with_type and not isinstance(exc, FarmError):
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def _from_ray(exc: BaseException) -> bool:
    return any(cls.__module__.startswith("ray.") for cls in type(exc).__mro__)
