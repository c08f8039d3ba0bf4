"""The one line a failed job's JobResult (and JobFailed) carries, read from history."""
from __future__ import annotations

from farm.futures import error_of
from farm.records import comfy_errors
from farm.records.events import EventType
from farm.records.history import HistoryItem, HistoryStatus, JobTimings, StatusMessage


def failed_item(*messages: StatusMessage) -> HistoryItem:
    return HistoryItem(1, "p", {}, {}, ("9",), {}, HistoryStatus.ERROR, False, messages, JobTimings(0.0))


def test_a_node_failure_says_which_node():
    payload = comfy_errors.execution_error("4", "CheckpointLoaderSimple", [], "x.safetensors is not safetensors",
                                           "farm.errors.CheckpointError")
    item = failed_item(StatusMessage(EventType.EXECUTION_ERROR, payload))
    assert error_of(item) == "node 4 (CheckpointLoaderSimple): x.safetensors is not safetensors"


def test_a_failure_the_farm_decided_names_no_empty_node():
    payload = comfy_errors.farm_failure("worker w0 died 3 times running this prompt")
    item = failed_item(StatusMessage(EventType.EXECUTION_ERROR, payload))
    assert error_of(item) == "worker w0 died 3 times running this prompt"


def test_an_interrupted_job_says_so():
    assert error_of(failed_item(StatusMessage(EventType.EXECUTION_INTERRUPTED, {}))) == "interrupted"
