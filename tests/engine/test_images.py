"""ComfyUI's output naming and PNG metadata, written off the caller's thread."""
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from farm.engine.images import LocalImageWriter, OutputPathError
from farm.records.images import ImageBatch, png_text_chunks


def pixels(n=1, size=8):
    return np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def writer(tmp_path):
    w = LocalImageWriter(tmp_path / "output", tmp_path / "temp")
    yield w
    w.close()


def test_names_continue_after_existing_files(writer, tmp_path):
    (tmp_path / "output" / "sub").mkdir(parents=True)
    (tmp_path / "output" / "sub" / "shot_00007_.png").write_bytes(b"")
    refs = writer.save(ImageBatch(pixels(2), "sub/shot", "output"))
    assert [(r.filename, r.subfolder, r.type) for r in refs] == [("shot_00008_.png", "sub", "output"),
                                                                 ("shot_00009_.png", "sub", "output")]
    writer.flush()
    assert (tmp_path / "output" / "sub" / "shot_00009_.png").is_file()


def test_png_text_chunks_hold_prompt_and_extra_pnginfo(writer, tmp_path):
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}
    chunks = png_text_chunks(prompt, {"workflow": {"nodes": [1]}})
    (ref,) = writer.save(ImageBatch(pixels(), "meta", "output", chunks))
    writer.flush()
    with Image.open(tmp_path / "output" / ref.filename) as png:
        assert json.loads(png.text["prompt"]) == prompt
        assert json.loads(png.text["workflow"]) == {"nodes": [1]}
        assert np.array_equal(np.asarray(png), pixels()[0])


@pytest.mark.parametrize("prefix", ["../escape", "/etc/passwd", "a/../../b", "sub/"])
def test_prefix_cannot_leave_the_folder(writer, prefix):
    with pytest.raises(OutputPathError):
        writer.save(ImageBatch(pixels(), prefix, "output"))


def test_concurrent_saves_never_reuse_a_name(writer, tmp_path):
    with ThreadPoolExecutor(8) as pool:
        refs = [r for batch in pool.map(lambda _: writer.save(ImageBatch(pixels(2), "race", "output")), range(16))
                for r in batch]
    writer.flush()
    names = [r.filename for r in refs]
    assert len(set(names)) == 32
    assert len(list((tmp_path / "output").glob("race_*_.png"))) == 32
