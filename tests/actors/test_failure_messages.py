"""A job that fails says what went wrong in one line, in history, the execution_error event
and JobFailed: never a remote traceback or ANSI colour codes (those go to the log)."""
import pytest
import ray

from farm.client import JobFailed
from farm.errors import FarmError, NodeExecutionError, one_line
from farm.records.events import EventType


@ray.remote
def _fails_remotely(kind: str):
    if kind == "farm":
        raise FarmError("filename_prefix '../x' points outside the output folder")
    raise ValueError("bad value 7\nsecond line")


@pytest.mark.parametrize("kind, expected", [
    ("farm", "filename_prefix '../x' points outside the output folder"),
    ("value", "ValueError: bad value 7 second line"),
])
def test_one_line_of_a_real_ray_task_error(ray_farm, kind, expected):
    with pytest.raises(Exception) as caught:
        ray.get(_fails_remotely.remote(kind))
    assert "Traceback" in str(caught.value) or "\x1b[" in str(caught.value)  # what Ray itself says
    assert one_line(caught.value) == expected


def test_one_line_strips_colours_and_keeps_the_node():
    error = NodeExecutionError("9", "SaveImage", OSError("\x1b[31mdisk\x1b[0m full\n  at /x"))
    assert one_line(error) == "node 9 (SaveImage) failed: OSError: disk full at /x"
    assert len(one_line(ValueError("x" * 1000))) < 320


def test_a_job_whose_images_cannot_be_written_fails_in_one_line(ray_farm, txt2img):
    blocker = ray_farm.paths.output / "blocked"  # a file where the prefix wants a folder
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    future = ray_farm.submit(txt2img, {"9.filename_prefix": "blocked/x", "3.seed": 424242})
    with pytest.raises(JobFailed) as caught:
        future.result(timeout=90)
    for text in (str(caught.value), caught.value.result.error):
        assert "\n" not in text and "\x1b" not in text and "Traceback" not in text, text
        assert "writing the images failed" in text
    item = next(i for i in ray_farm.history(50) if i.prompt_id == future.prompt_id)
    messages = [m.data["exception_message"] for m in item.messages if m.event is EventType.EXECUTION_ERROR]
    assert messages and all("\n" not in m and "\x1b" not in m and "Traceback" not in m for m in messages)
