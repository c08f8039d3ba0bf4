"""A checkpoint file that is damaged (cut short, or a header that is garbage) in the farm's
models folder: the job that names it fails once, in one line naming the file, and the
worker that tried it stays up and runs the next job."""
from __future__ import annotations

import struct

import pytest
from fault_helpers import assert_ended_once

from farm.client import JobFailed

CASES = {
    "cut-short.safetensors": lambda data: data[: len(data) // 2],
    "garbage-header.safetensors": lambda data: struct.pack("<Q", 4096) + b"{\x00garbage" * 600 + data[4104:],
}


@pytest.fixture
def damaged(farm):
    """The damaged files beside the good ones (validation lists them), removed afterwards."""
    folder = farm.paths.models / "checkpoints"
    data = (folder / "tiny-sd15.safetensors").read_bytes()
    made = []
    for name, damage in CASES.items():
        (folder / name).write_bytes(damage(data))
        made.append(folder / name)
    yield list(CASES)
    for path in made:
        path.unlink(missing_ok=True)


def test_a_damaged_checkpoint_fails_its_job_clearly_and_the_worker_goes_on(farm, damaged, txt2img):
    workers = {w.worker_id for w in farm.status().workers}
    futures = [farm.submit(txt2img, {"4.ckpt_name": name, "3.seed": 700 + i}) for i, name in enumerate(damaged)]
    for future, name in zip(futures, damaged):
        with pytest.raises(JobFailed) as caught:
            future.result(timeout=180)
        error = caught.value.result.error
        assert name in error and "not a readable safetensors file" in error, error
        assert "\n" not in error and "Traceback" not in error
        assert caught.value.result.attempts == 1  # a bad file is not a lost worker: no retry
    good = farm.submit(txt2img, {"3.seed": 710}).result(timeout=180)
    assert good.ok and good.files[0].is_file()
    assert {w.worker_id for w in farm.status().workers} == workers  # no worker died or was replaced
    assert_ended_once(farm, [f.prompt_id for f in futures] + [good.prompt_id])
