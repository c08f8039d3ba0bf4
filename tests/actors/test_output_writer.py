"""The head's PNG writer: names reserved by concurrent workers never collide, each write's
future is done only when its files are complete on disk (metadata included), a write that
cannot reach the disk fails its future with a clear error, and on the Ray cluster a
reservation is one small round trip."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import ray
from PIL import Image

from actors.output_writer import OutputFiles, OutputWriter
from farm.engine.images import OutputWriteError
from farm.records.images import ImageBatch, png_text_chunks


def batch(value: int, count: int = 2, prefix: str = "shots/img") -> ImageBatch:
    pixels = np.full((count, 16, 16, 3), value, dtype=np.uint8)
    return ImageBatch(pixels, prefix, "output", png_text_chunks({"3": {"class_type": "KSampler"}}, None))


def test_concurrent_writes_get_distinct_names_and_their_futures_see_complete_files(tmp_path):
    files = OutputFiles(tmp_path / "out", tmp_path / "temp", threads=2)
    refs: list = []
    lock = threading.Lock()

    def worker(value: int) -> None:
        got = files.reserve("shots/img", "output", 2)
        files.write(got, batch(value)).result(30)
        for ref in got:  # done means on disk, whoever else is writing meanwhile
            assert files.path(ref).is_file()
        with lock:
            refs.extend((value, r) for r in got)

    threads = [threading.Thread(target=worker, args=(v,)) for v in (10, 20, 30, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [r.filename for _, r in refs]
    assert len(names) == 8 and len(set(names)) == 8
    assert sorted(names) == [f"img_{n:05}_.png" for n in range(1, 9)]  # ComfyUI's counter, no gaps
    for value, ref in refs:
        image = Image.open(files.path(ref))
        assert ref.subfolder == "shots"
        assert np.asarray(image)[0, 0, 0] == value
        assert json.loads(image.text["prompt"]) == {"3": {"class_type": "KSampler"}}
    files.close()


def test_a_write_that_cannot_reach_the_disk_fails_its_future_clearly(tmp_path):
    files = OutputFiles(tmp_path / "out", tmp_path / "temp", threads=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "blocked").write_text("a file where the subfolder should be")
    refs = files.reserve("blocked/img", "output", 2)
    future = files.write(refs, batch(5))
    with pytest.raises(OutputWriteError, match=r"cannot write .*blocked.*writable directory"):
        future.result(30)
    ok = files.reserve("fine/img", "output", 1)  # the writer goes on for everyone else
    files.write(ok, batch(6, count=1)).result(30)
    assert files.path(ok[0]).is_file()
    files.close()


def test_the_writer_actor_reserves_in_one_round_trip_and_write_refs_are_futures(ray_farm, tmp_path):
    writer = OutputWriter.remote(str(tmp_path / "out"), str(tmp_path / "temp"))
    ray.get(writer.reserve.remote("warm/up", "output", 1))
    rounds = 50
    started = time.perf_counter()
    for _ in range(rounds):
        ray.get(writer.reserve.remote("rt/img", "output", 1))
    per_call_ms = (time.perf_counter() - started) / rounds * 1000
    print(f"\nOutputWriter.reserve round trip on the local Ray cluster: {per_call_ms:.2f} ms")  # a figure, not a test
    refs = ray.get(writer.reserve.remote("rt/img", "output", 2))
    assert [r.filename for r in refs] == [f"img_{rounds + 1:05}_.png", f"img_{rounds + 2:05}_.png"]
    ray.get(writer.write.remote(refs, batch(7)), timeout=60)
    assert all((tmp_path / "out" / "rt" / r.filename).is_file() for r in refs)
    (tmp_path / "out" / "jam").write_text("not a folder")
    jammed = ray.get(writer.reserve.remote("jam/img", "output", 1))
    with pytest.raises(OutputWriteError, match="jam"):
        ray.get(writer.write.remote(jammed, batch(8, count=1)), timeout=60)
    ray.kill(writer)
