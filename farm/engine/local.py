"""Rendering in this process, without Ray: the engine on one device with a local model
provider and image writer. `farm run --local` uses it; the farm's GPU workers build the
same parts around their own residency and output path."""
from __future__ import annotations

import torch

from farm.engine import Engine, JobContext, JobOutcome, PlannedJob
from farm.engine.context import no_events
from farm.engine.images import LocalImageWriter
from farm.engine.local_models import LocalModelProvider
from farm.models.compiled import CompileConfig, UNetCompiler
from farm.models.device import choose_device, choose_dtype
from farm.models.store import ModelFolders
from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from farm.records.paths import FarmPaths
from farm.workflow.prepare import PreparedPrompt, prepare


class LocalRenderer:
    def __init__(self, paths: FarmPaths, device: torch.device | None = None, compile: CompileConfig | None = None):
        """`compile`: torch.compile of the UNet (farm.models.compiled); off unless given,
        since one local run rarely repays a compile of a minute."""
        self.paths = paths
        self.registry = default_registry()
        self.node_ctx = NodeContext.for_paths(paths)
        device = device or choose_device()
        dtype = choose_dtype(device)
        self.models = LocalModelProvider(ModelFolders(paths.models), device, dtype)
        self.models.compiler = UNetCompiler(compile or CompileConfig(enabled=False), device,
                                            paths.temp.parent / "state")
        self.writer = LocalImageWriter(paths.output, paths.temp)
        self.engine = Engine(self.registry, self.node_ctx, self.models, self.writer, device, dtype)

    def prepare(self, workflow: object, overrides: dict | None = None) -> PreparedPrompt:
        return prepare(workflow, self.registry, self.node_ctx, overrides)

    def run(self, prepared: PreparedPrompt, events=None, extra_pnginfo: dict | None = None) -> JobOutcome:
        context = JobContext(prepared.prompt_id, prepared.prompt, extra_pnginfo, None,
                             events or no_events)
        return self.engine.run(PlannedJob(context, prepared.plan))

    def close(self) -> None:
        self.writer.close()
