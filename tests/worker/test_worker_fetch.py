"""A worker whose node lacks a checkpoint fetches it from the farm's model source before
the batch (instead of refusing the job at admission), then reports it on the node; a file
the source lacks too is still an invalid job, named."""
from __future__ import annotations

import concurrent.futures
import json
import uuid
from importlib.resources import files

import fsspec
import pytest
import torch

from farm.engine.images import LocalImageWriter
from farm.models.source import fetched_root
from farm.models.tiers import TierConfig
from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from farm.records.paths import FarmPaths
from farm.records.residency import Tier
from farm.scheduler.messages import FailureKind, WorkItem
from farm.worker.channels import EventForwarder, RemoteImageSink
from farm.worker.core import WorkerCore
from farm.workflow.prepare import prepare

TINY = {"5.width": 64, "5.height": 64, "3.steps": 2}
CKPT = "tiny-sd15.safetensors"


@pytest.fixture
def node(tmp_path):
    """A worker on a node whose models folder is empty; its farm's source set per test."""
    made = []

    def make(source: str) -> tuple[WorkerCore, FarmPaths]:
        (tmp_path / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
        paths = FarmPaths.under(tmp_path, tmp_path / "models", model_source=source)
        writer = LocalImageWriter(paths.create().output, paths.temp)
        forwarder = EventForwarder(lambda batch: None, concurrent.futures.wait, interval_s=0.01)
        made.append((forwarder, writer))
        core = WorkerCore("w-fetch", paths, torch.device("cpu"), torch.float32,
                          RemoteImageSink(writer.reserve, writer.write), forwarder,
                          TierConfig(vram_bytes=1 << 30, pinned_bytes=1 << 30))
        return core, paths

    yield make
    for forwarder, writer in made:
        forwarder.close()
        writer.close()


def item(prompt_id: str, paths: FarmPaths, **overrides) -> WorkItem:
    workflow = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
    # validated as the head validates: its folder plus the source's listing
    prepared = prepare(workflow, default_registry(), NodeContext.for_paths(paths), {**TINY, **overrides},
                       prompt_id=prompt_id)
    return WorkItem(prompt_id, prepared.prompt, prepared.plan, "client-1")


def test_a_checkpoint_only_in_a_memory_source_is_fetched_and_renders(node, tiny_models):
    uri = f"memory://src-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("memory").pipe(f"/{uri[len('memory://'):]}/checkpoints/{CKPT}",
                                     (tiny_models / "checkpoints" / CKPT).read_bytes())
    core, paths = node(uri)
    assert core.models.report().on_node == frozenset()  # nothing here yet: placement adds a fetch
    result = core.run_batch([item("f1", paths, **{"4.ckpt_name": CKPT})])
    (report,) = result.reports
    assert report.ok, report.error
    report.writes[0].result(30)
    assert (fetched_root(paths.models) / "checkpoints" / CKPT).is_file()
    assert [m.source for m in result.loads] == [Tier.STORE]
    assert CKPT in result.residency.on_node and CKPT in result.residency.gpu


def test_a_local_folder_source_serves_the_file_and_one_it_lacks_is_refused_by_name(node, tiny_models, tmp_path):
    source = tmp_path / "share"
    (source / "checkpoints").mkdir(parents=True)
    (source / "checkpoints" / CKPT).write_bytes((tiny_models / "checkpoints" / CKPT).read_bytes())
    (source / "checkpoints" / "gone.safetensors").write_bytes(b"")
    core, paths = node(str(source))
    ok = item("f2", paths, **{"4.ckpt_name": CKPT})
    gone = item("f3", paths, **{"4.ckpt_name": "gone.safetensors"})
    (source / "checkpoints" / "gone.safetensors").unlink()  # removed after validation
    by_id = {r.prompt_id: r for r in core.run_batch([ok, gone]).reports}
    assert by_id["f2"].ok, by_id["f2"].error
    assert by_id["f3"].failure is FailureKind.INVALID
    assert "w-fetch" in by_id["f3"].error and "gone.safetensors" in by_id["f3"].error
    assert str(source) in by_id["f3"].error
