"""Session fixtures: tiny checkpoints made once (real safetensors files in the LDM layout,
written by farm's own make-checkpoint)."""
from pathlib import Path

import pytest

from farm.models.make import make_checkpoint


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A ComfyUI-style models folder with tiny-sd15 and tiny-sdxl single-file checkpoints."""
    root = tmp_path_factory.mktemp("models")
    for arch in ("tiny-sd15", "tiny-sdxl"):
        make_checkpoint(arch, root / "checkpoints" / f"{arch}.safetensors", seed=7)
    return root
