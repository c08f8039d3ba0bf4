"""The head's PNG writer: names from concurrent workers never collide, and a wait returns
only when those files are complete on disk, metadata included."""
from __future__ import annotations

import json
import threading

import numpy as np
from PIL import Image

from actors.output_writer import OutputFiles
from farm.records.images import ImageBatch, png_text_chunks


def batch(value: int, count: int = 2, prefix: str = "shots/img") -> ImageBatch:
    pixels = np.full((count, 16, 16, 3), value, dtype=np.uint8)
    return ImageBatch(pixels, prefix, "output", png_text_chunks({"3": {"class_type": "KSampler"}}, None))


def test_concurrent_saves_get_distinct_names_and_wait_sees_complete_files(tmp_path):
    files = OutputFiles(tmp_path / "out", tmp_path / "temp", threads=2)
    refs: list = []
    lock = threading.Lock()

    def worker(value: int) -> None:
        got = files.save(batch(value))
        files.wait(got)
        with lock:
            refs.extend((value, r) for r in got)

    threads = [threading.Thread(target=worker, args=(v,)) for v in (10, 20, 30, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [r.filename for _, r in refs]
    assert len(names) == 8 and len(set(names)) == 8
    for value, ref in refs:
        image = Image.open(files.path(ref))
        assert ref.subfolder == "shots"
        assert np.asarray(image)[0, 0, 0] == value
        assert json.loads(image.text["prompt"]) == {"3": {"class_type": "KSampler"}}
    files.close()
