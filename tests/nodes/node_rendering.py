"""What the node tests share: a LocalRenderer on the CPU over a models folder, the latents
a workflow's sampler node produced, and the same workflows run alone and then as one batch
(batched jobs must give what they give alone)."""
from __future__ import annotations

from pathlib import Path

import torch

from farm.engine import JobContext, PlannedJob
from farm.engine.local import LocalRenderer
from farm.records.paths import FarmPaths


def cpu_renderer(models: Path, out: Path) -> LocalRenderer:
    return LocalRenderer(FarmPaths(models, out / "output", out / "input", out / "temp"), device=torch.device("cpu"))


def _tensor(value) -> torch.Tensor:
    return getattr(value, "samples", value)  # a LATENT's latents; an IMAGE is a tensor already


def sampled(renderer: LocalRenderer, wf: dict, node: str = "3") -> torch.Tensor:
    """Render `wf` and return the latents its sampler node (KSampler "3") produced, or
    the first output of another `node` (the images of a VAEDecode)."""
    prepared = renderer.prepare(wf)
    outcome = renderer.run(prepared)
    assert outcome.ok, outcome.error
    return _tensor(renderer.engine.cache.get(prepared.plan.signatures[node])[0])


def batched_and_alone(renderer: LocalRenderer, wfs: list[dict],
                      node: str = "3") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(latents from one engine call of all `wfs`, latents of the same workflow alone), per
    workflow; the node cache is cleared in between so that the batch computes everything."""
    alone = [sampled(renderer, wf, node) for wf in wfs]
    renderer.engine.cache.clear()
    prepared = [renderer.prepare(wf) for wf in wfs]
    outcomes = renderer.engine.run_batch([PlannedJob(JobContext(p.prompt_id, p.prompt), p.plan) for p in prepared])
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    return [(_tensor(renderer.engine.cache.get(p.plan.signatures[node])[0]), expected)
            for p, expected in zip(prepared, alone)]


def spy_on_sampler_calls(monkeypatch) -> list[tuple[int, int]]:
    """Each sampler run's (latent rows, schedule dimensions) from now on: 2 for one schedule
    per row. The spy calls the real farm.nodes.ksampling.sample."""
    import farm.nodes.ksampling as ksampling

    calls: list[tuple[int, int]] = []
    real = ksampling.sample

    def spy(denoiser, latent, noise, sigmas, *args, **kwargs):
        calls.append((latent.shape[0], sigmas.ndim))
        return real(denoiser, latent, noise, sigmas, *args, **kwargs)

    monkeypatch.setattr(ksampling, "sample", spy)
    return calls
