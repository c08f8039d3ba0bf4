"""Model source: a file a node's models folder lacks is listed from the source and fetched
into the fetch folder beside it (atomically, checked to be safetensors); a name that
climbs out, a pickle, or a file that is not safetensors is refused by name."""
from __future__ import annotations

import uuid

import fsspec
import pytest

from farm.errors import CheckpointError, UnsafeCheckpointError
from farm.models.source import ModelSourceError, check_safetensors, fetched_root
from farm.models.store import ModelFolders

CKPT = "tiny-sd15.safetensors"


@pytest.fixture
def memory_source(tiny_models):
    """A memory:// source holding the tiny SD1.5 checkpoint under checkpoints/sub/."""
    uri = f"memory://models-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    root = uri[len("memory://"):]
    fs.pipe(f"/{root}/checkpoints/sub/{CKPT}", (tiny_models / "checkpoints" / CKPT).read_bytes())
    fs.pipe(f"/{root}/checkpoints/old.ckpt", b"\x80\x04pickle")
    fs.pipe(f"/{root}/checkpoints/fake.safetensors", b"\x80\x04not a header at all")
    yield uri
    fs.rm(f"/{root}", recursive=True)


def empty_models(tmp_path):
    (tmp_path / "node" / "models" / "checkpoints").mkdir(parents=True)
    return tmp_path / "node" / "models"


@pytest.mark.parametrize("kind", ["folder", "memory"])
def test_a_file_only_the_source_has_is_listed_sized_and_fetched(kind, tmp_path, tiny_models, memory_source):
    source, name = (str(tiny_models), CKPT) if kind == "folder" else (memory_source, f"sub/{CKPT}")
    folders = ModelFolders(empty_models(tmp_path), source=source)
    original = tiny_models / "checkpoints" / CKPT
    assert name in folders.names("checkpoints") and folders.local_names("checkpoints") == []
    assert folders.size_bytes("checkpoints", name) == original.stat().st_size
    path = folders.ensure("checkpoints", name)
    assert path == fetched_root(folders.root) / "checkpoints" / name
    assert path.read_bytes() == original.read_bytes()
    assert folders.local_names("checkpoints") == [name]  # on the node now: resolve finds it
    assert folders.resolve("checkpoints", name) == path
    assert not list(path.parent.glob("*.part")) and not (folders.root / "checkpoints" / name).exists()


def test_a_name_that_climbs_out_is_refused_before_the_source_is_read(tmp_path, tiny_models):
    folders = ModelFolders(empty_models(tmp_path), source=str(tiny_models))
    for name in ("../checkpoints/" + CKPT, "/etc/passwd"):
        with pytest.raises(CheckpointError, match="outside the checkpoints folder"):
            folders.ensure("checkpoints", name)
        with pytest.raises(CheckpointError, match="outside the checkpoints folder"):
            folders.size_bytes("checkpoints", name)


def test_a_pickle_or_a_file_that_is_not_safetensors_is_refused_and_not_kept(tmp_path, memory_source):
    folders = ModelFolders(empty_models(tmp_path), source=memory_source)
    assert "old.ckpt" not in folders.names("checkpoints")  # only safetensors are listed
    with pytest.raises(UnsafeCheckpointError, match="only .safetensors"):
        folders.ensure("checkpoints", "old.ckpt")
    with pytest.raises(ModelSourceError, match="'fake.safetensors' from the model source .* is not a safetensors"):
        folders.ensure("checkpoints", "fake.safetensors")
    fetched = fetched_root(folders.root) / "checkpoints"
    assert not fetched.exists() or list(fetched.iterdir()) == []  # no partial, no bad file left


def test_a_file_missing_everywhere_is_named(tmp_path, tiny_models):
    folders = ModelFolders(empty_models(tmp_path), source=str(tiny_models))
    with pytest.raises(CheckpointError, match="'nope.safetensors' is neither in the checkpoints folder nor"):
        folders.ensure("checkpoints", "nope.safetensors")


def test_a_truncated_download_fails_the_header_check(tmp_path, tiny_models):
    whole = tiny_models / "checkpoints" / CKPT
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-100])
    check_safetensors(whole, "the whole file")
    with pytest.raises(ModelSourceError, match="is truncated"):
        check_safetensors(cut, "the cut file")


def test_without_a_source_nothing_changes(tmp_path):
    folders = ModelFolders(empty_models(tmp_path))
    with pytest.raises(CheckpointError, match="not found"):
        folders.ensure("checkpoints", CKPT)
    assert fetched_root(folders.root) / "checkpoints" not in folders.folders("checkpoints")
