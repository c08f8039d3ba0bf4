"""ModelFolders as users keep their models: subfolders, symlinked files and folders (the
link may point anywhere; the name must stay inside), ComfyUI's extra_model_paths.yaml."""
import os

import pytest

from farm.errors import CheckpointError
from farm.models.store import EXTRA_PATHS_ENV, ModelFolders


@pytest.fixture(autouse=True)
def no_extra_paths_env(monkeypatch):
    monkeypatch.delenv(EXTRA_PATHS_ENV, raising=False)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def layout(tmp_path):
    models = tmp_path / "ComfyUI" / "models"
    touch(models / "checkpoints" / "base.safetensors")
    touch(models / "checkpoints" / "sd15" / "foo.safetensors")
    touch(models / "checkpoints" / "notes.txt")
    elsewhere = tmp_path / "nas"
    touch(elsewhere / "linked.safetensors")
    touch(elsewhere / "shared" / "deep" / "bar.safetensors")
    os.symlink(elsewhere / "linked.safetensors", models / "checkpoints" / "linked.safetensors")
    os.symlink(elsewhere / "shared", models / "checkpoints" / "shared")
    return models, elsewhere


def test_names_follow_links_and_subfolders(layout):
    models, _ = layout
    assert ModelFolders(models).names("checkpoints") == [
        "base.safetensors", "linked.safetensors", "sd15/foo.safetensors", "shared/deep/bar.safetensors"]


def test_resolve_follows_links_whose_target_is_outside(layout):
    models, elsewhere = layout
    folders = ModelFolders(models)
    assert folders.resolve("checkpoints", "linked.safetensors").resolve() == elsewhere / "linked.safetensors"
    assert folders.resolve("checkpoints", "shared/deep/bar.safetensors").read_bytes() == b"x"
    assert folders.resolve("checkpoints", "sd15\\foo.safetensors").is_file()  # a Windows-saved workflow


@pytest.mark.parametrize("name", ["../../nas/linked.safetensors", "/etc/passwd", "sd15/../../x.safetensors",
                                  "C:/models/x.safetensors", ""])
def test_names_that_climb_out_are_refused(layout, name):
    with pytest.raises(CheckpointError, match="outside the checkpoints folder"):
        ModelFolders(layout[0]).resolve("checkpoints", name)


def test_a_link_loop_ends(layout):
    models, _ = layout
    os.symlink(models / "checkpoints", models / "checkpoints" / "sd15" / "loop")
    names = ModelFolders(models).names("checkpoints")
    assert "sd15/foo.safetensors" in names and len(names) == len(set(names)) and len(names) < 10


def test_extra_model_paths_yaml_beside_the_models_folder(layout, tmp_path):
    models, _ = layout
    touch(tmp_path / "a1111" / "models" / "Stable-diffusion" / "webui.safetensors")
    touch(tmp_path / "more" / "other.safetensors")
    touch(tmp_path / "first" / "base.safetensors").write_bytes(b"preferred")
    touch(tmp_path / "first" / "lora.safetensors")
    (models.parent / "extra_model_paths.yaml").write_text(
        "a111:\n"
        f"    base_path: {tmp_path / 'a1111'}\n"
        "    checkpoints: |\n"
        "        models/Stable-diffusion\n"
        "        ../more\n"
        "    clip_vision: models/clip_vision\n"  # a kind farm does not load: skipped
        "preferred:\n"
        "    base_path: ../first\n"  # relative to the file's folder
        "    is_default: true\n"
        "    checkpoints: .\n"
        "    loras: .\n"
        "empty:\n")
    folders = ModelFolders(models)
    assert folders.names("checkpoints") == [
        "base.safetensors", "linked.safetensors", "lora.safetensors", "other.safetensors", "sd15/foo.safetensors",
        "shared/deep/bar.safetensors", "webui.safetensors"]
    assert folders.resolve("checkpoints", "webui.safetensors").is_file()
    assert folders.resolve("checkpoints", "base.safetensors").read_bytes() == b"preferred"  # is_default first
    assert folders.names("loras") == ["base.safetensors", "lora.safetensors"]


def test_extra_model_paths_from_the_environment(layout, tmp_path, monkeypatch):
    touch(tmp_path / "env" / "e.safetensors")
    config = tmp_path / "paths.yaml"
    config.write_text(f"x:\n  checkpoints: {tmp_path / 'env'}\n")
    monkeypatch.setenv(EXTRA_PATHS_ENV, str(config))
    assert "e.safetensors" in ModelFolders(layout[0]).names("checkpoints")
    monkeypatch.setenv(EXTRA_PATHS_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(CheckpointError, match="missing.yaml"):
        ModelFolders(layout[0])
    config.write_text("x: [unclosed\n")
    monkeypatch.setenv(EXTRA_PATHS_ENV, str(config))
    with pytest.raises(CheckpointError, match="cannot read"):
        ModelFolders(layout[0])
