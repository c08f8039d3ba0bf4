"""The tiered provider makes memory agree with the residency accounting: what the
accounting evicts leaves memory (tensors really freed), what it keeps comes back without
reading the file, and the loads it measures are labelled with the tier they came from."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from farm.models.load import load_checkpoint
from farm.models.store import ModelFolders
from farm.models.tiers import (
    TierConfig,
    TieredModelProvider,
    checkpoint_bytes,
    derive_budgets,
)
from farm.records.residency import Residency, Tier

SD15, SDXL = "tiny-sd15.safetensors", "tiny-sdxl.safetensors"


class CountingLoader:
    """The real loader, counting how often a file is read."""

    def __init__(self):
        self.reads: list[str] = []

    def __call__(self, path: Path, device, dtype):
        self.reads.append(Path(path).name)
        return load_checkpoint(path, device, dtype)


def provider(models: Path, vram: int, pinned: int, loader=None) -> TieredModelProvider:
    residency = Residency(vram, pinned, 1 << 40)
    return TieredModelProvider(ModelFolders(models), torch.device("cpu"), torch.float32, residency,
                               loader=loader or CountingLoader())


def file_size(models: Path, name: str) -> int:
    return (models / "checkpoints" / name).stat().st_size


def test_second_checkpoint_evicts_the_first_when_only_one_fits(tiny_models):
    budget = max(file_size(tiny_models, SD15), file_size(tiny_models, SDXL))  # one at a time
    dropped: list[str] = []
    p = provider(tiny_models, vram=budget, pinned=0)
    p.on_drop.append(dropped.append)
    first = p.checkpoint(SD15)
    unet_param = next(first.unet.parameters())
    assert unet_param.device.type == "cpu"
    p.checkpoint(SDXL)
    assert dropped == [SD15]
    # the memory is really gone, even for whoever still holds the modules or the parameter
    assert next(first.unet.parameters()).device.type == "meta" and unet_param.numel() == 0
    assert p.report().gpu == frozenset({SDXL})
    assert p.resident() == {SDXL: "device"}
    # back from the models folder; this worker read it before, so that counts as local disk
    again = p.checkpoint(SD15)
    assert again is not first
    assert [m.source for m in p.moves] == [Tier.STORE, Tier.STORE, Tier.DISK]
    assert p._loader.reads == [SD15, SDXL, SD15]


def test_pinned_tier_keeps_an_evicted_checkpoint_without_rereading(tiny_models):
    one = max(file_size(tiny_models, SD15), file_size(tiny_models, SDXL))
    both = file_size(tiny_models, SD15) + file_size(tiny_models, SDXL)
    p = provider(tiny_models, vram=one, pinned=both)
    a = p.checkpoint(SD15)
    p.checkpoint(SDXL)
    assert p.report().gpu == frozenset({SDXL}) and SD15 in p.report().pinned
    assert p.resident() == {SD15: "host", SDXL: "device"}
    assert p.checkpoint(SD15) is a  # same modules: what the output cache holds stays valid
    assert p.moves[-1].source is Tier.PINNED
    assert p._loader.reads == [SD15, SDXL]


def test_a_kept_checkpoint_stays_on_the_device_through_the_batch(tiny_models):
    one = max(file_size(tiny_models, SD15), file_size(tiny_models, SDXL))
    p = provider(tiny_models, vram=one, pinned=0)
    p.keep({SD15, SDXL})  # a batch that uses both: runs over budget rather than lose one
    assert p.resident() == {SD15: "device", SDXL: "device"}
    p.release()  # afterwards the accounting's choice applies
    assert len(p.resident()) == 1
    assert set(p.resident()) == set(p.report().gpu)


def test_a_checkpoint_larger_than_the_device_budget_is_refused_with_advice(tiny_models):
    p = provider(tiny_models, vram=1000, pinned=0)
    with pytest.raises(Exception, match="budget"):
        p.checkpoint(SD15)


def test_loaded_bytes_match_the_float32_file(tiny_models):
    p = provider(tiny_models, vram=1 << 30, pinned=0)
    ckpt = p.checkpoint(SD15)
    # tiny checkpoints are float32 files; in memory they are the same tensors plus no header
    assert 0 < file_size(tiny_models, SD15) - checkpoint_bytes(ckpt) < 200_000


def test_budgets_follow_the_config():
    b = derive_budgets(TierConfig(vram_bytes=123, pinned_bytes=45), torch.device("cpu"))
    assert (b.vram_bytes, b.pinned_bytes) == (123, 45)
    derived = derive_budgets(TierConfig(), torch.device("cpu"), workers_on_host=2)
    assert 0 < derived.vram_bytes == derived.pinned_bytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_moves_use_pinned_copies(tiny_models):
    one = max(file_size(tiny_models, SD15), file_size(tiny_models, SDXL))
    both = 2 * one
    residency = Residency(one, both, 1 << 40)
    p = TieredModelProvider(ModelFolders(tiny_models), torch.device("cuda"), torch.float16, residency)
    a = p.checkpoint(SD15)
    reference = {k: v.float().cpu().clone() for k, v in a.unet.state_dict().items()}
    p.checkpoint(SDXL)
    param = next(a.unet.parameters())
    assert param.device.type == "cpu" and param.is_pinned()
    assert p.checkpoint(SD15) is a and next(a.unet.parameters()).device.type == "cuda"
    assert p.moves[-1].source is Tier.PINNED
    for k, v in a.unet.state_dict().items():
        torch.testing.assert_close(v.float().cpu(), reference[k], rtol=0, atol=0)


def test_a_checkpoint_that_fails_to_load_is_held_on_no_tier(tiny_models, tmp_path):
    """The worker reports what it holds to the dispatcher: a file it could not load must not
    be among it, or placement would send that checkpoint's jobs back to it."""
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / SD15).symlink_to(tiny_models / "checkpoints" / SD15)
    (models / "checkpoints" / "broken.safetensors").write_bytes(b"not a safetensors file")
    p = provider(models, vram=1 << 30, pinned=1 << 30)
    p.checkpoint(SD15)
    with pytest.raises(Exception, match="broken.safetensors"):
        p.checkpoint("broken.safetensors")
    report = p.report()
    assert "broken.safetensors" not in report.gpu | report.pinned | report.disk
    assert SD15 in report.gpu and p.resident() == {SD15: "device"}
