"""The output folder's disk is full. Done unprivileged with RLIMIT_FSIZE on the head's PNG
writer (the one process that writes the output folder): the kernel then refuses its writes
past the cap as a full disk would (EFBIG, "File too large", where a full disk says ENOSPC;
Python ignores SIGXFSZ, so it is an OSError), for that process only and undone by raising
the soft limit back, so no loop device, tmpfs or root is needed. A RLIMIT_FSIZE on a whole
subprocess farm would hit Ray's own logs and object spilling first.

The jobs whose images cannot be written fail in one line (after the farm's retries), leave
no half-written file, and the farm keeps going once there is room again."""
from __future__ import annotations

import resource

import pytest
import ray
from fault_helpers import assert_ended_once

from farm.client import JobFailed

CAP_BYTES = 1024  # a 64x64 PNG with the workflow in its text chunk is several KB


def set_fsize(handle, soft: int | None) -> None:
    def apply(self, soft):
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard if soft is None else soft, hard))

    ray.get(handle.__ray_call__.remote(apply, soft), timeout=60)


@pytest.fixture
def full_disk(farm):
    writer = farm.cluster.writer
    set_fsize(writer, CAP_BYTES)
    try:
        yield
    finally:
        set_fsize(writer, None)


def test_a_full_output_disk_fails_jobs_clearly_loses_nothing_and_the_farm_goes_on(farm, full_disk, txt2img):
    folder = farm.paths.output / "fulldisk"
    futures = [farm.submit(txt2img, {"9.filename_prefix": "fulldisk/img", "3.seed": 800 + i}) for i in range(2)]
    for future in futures:
        with pytest.raises(JobFailed) as caught:
            future.result(timeout=240)
        error = caught.value.result.error
        assert "writing the images failed" in error and "File too large" in error and "fulldisk" in error, error
        assert "\n" not in error and "Traceback" not in error
    leftovers = sorted(p.name for p in folder.glob("*")) if folder.exists() else []
    assert leftovers == [], f"half-written files left in the output folder: {leftovers}"
    set_fsize(farm.cluster.writer, None)  # room again
    good = farm.submit(txt2img, {"9.filename_prefix": "fulldisk/img", "3.seed": 810}).result(timeout=240)
    assert good.ok and good.files[0].is_file() and good.files[0].stat().st_size > CAP_BYTES
    assert_ended_once(farm, [f.prompt_id for f in futures] + [good.prompt_id])
