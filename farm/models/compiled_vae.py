"""The VAE decoder compiled once per worker (CompileConfig.vae).

Decoding is a fifth of an SD1.5 batch's GPU time on an H200 (16 images at 512 px: 210 ms
eager), most of it GroupNorm and elementwise kernels that inductor fuses. It runs in
inductor's default mode, without CUDA graphs: a decode is a few large kernels, so launch
overhead is small, and it runs on the worker's decode threads, where graph trees' per-thread
state would need care (see compiled.adopt_cuda_graph_state). The batch dimension is dynamic:
one graph per latent size
(on the CPU a single image is decoded beside a copy of itself: rows are independent).

A compiled decode runs as one graph, so an interrupt is honoured before and after it, not
between the decoder's blocks as in eager mode. A compiler fault logs one warning and the
decoder runs eager from then on."""
from __future__ import annotations

import logging
import threading
import time

import torch

log = logging.getLogger(__name__)


class CompiledDecoder:
    """Callable: VAE latents [N, C, h, w] in the VAE's dtype -> pixels [N, 3, H, W] in [-1, 1]."""

    def __init__(self, vae: torch.nn.Module, config, label: str = ""):
        self.vae, self.label = vae, label
        self._compiled = torch.compile(self._decode, backend=config.backend, dynamic=None)
        self.fallback: str | None = None
        self.first_call_s = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        if self.fallback is not None:
            return self._decode(latents)
        rows = latents.shape[0]
        if rows == 1 and latents.device.type == "cpu":  # a one-row graph failed a layout check in GroupNorm
            # (torch 2.13, CPU): two rows there; on a GPU that would double the decode's work
            latents = torch.cat([latents, latents])
        torch._dynamo.maybe_mark_dynamic(latents, 0)
        with self._lock:
            first = self.calls == 0
            self.calls += 1
        started = time.perf_counter()
        try:
            out = self._compiled(latents)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a compiler fault must not fail jobs: eager from now on
            self.fallback = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log.warning("compiled VAE decode %s failed (%s); running eager", self.label, self.fallback)
            return self._decode(latents[:rows])
        if first:
            if latents.device.type == "cuda":
                torch.cuda.synchronize(latents.device)
            self.first_call_s = time.perf_counter() - started
            log.info("compiled VAE decode %s in %.1f s", self.label, self.first_call_s)
        return out[:rows]
