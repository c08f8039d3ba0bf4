"""Tiny checkpoints written once per test session, in both formats."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.models.make import make_checkpoint

SEED = 7  # not the default, so a writer that ignored the seed would be caught


@dataclass(frozen=True)
class TinyCheckpoint:
    arch: str
    seed: int
    single_file: Path
    folder: Path


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, TinyCheckpoint]:
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    out = {}
    for arch in ("tiny-sd15", "tiny-sdxl"):
        out[arch] = TinyCheckpoint(arch, SEED, make_checkpoint(arch, root / f"{arch}.safetensors", seed=SEED),
                                   make_checkpoint(arch, root / arch, seed=SEED))
    return out
