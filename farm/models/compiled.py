"""The UNet compiled once per worker: torch.compile per (architecture, latent size), batches
padded to a few row buckets so that shapes repeat and CUDA graphs replay.

Why buckets: with mode="reduce-overhead" every distinct input shape records its own CUDA
graph (and memory pool). A stream of batches of 1..8 jobs would record up to 16 shapes;
padded to 2, 4, 8, 16 and 32 UNet rows (CFG doubles the jobs) it records five, and the
padding rows cost little next to the Python overhead the graphs save. The batch dimension is
marked dynamic, so inductor compiles one graph per latent size for every bucket (compiling
is the expensive part: a minute or more per graph on a GPU), and the FX graph cache on disk
lets a restarted worker skip most of it.

One graph covers the rows on one side of 64 (GRAPH_SPLIT_ROWS): diffusers' Upsample2D takes a
different path for a batch of 64 or more (it makes its input contiguous there), dynamo guards
the graph on that test, and a batch on the other side compiles a second graph (72.5 s more on
an H100). The default buckets stop at 32 rows. On a CPU the convolutions' layout choice
splits once more, at 16 rows; on an H100 rows 2 to 32 shared one graph.

One compiled module per architecture: checkpoints of one layout run on a shared stage fed
their weights (farm.models.compiled_stage), so a second checkpoint costs a weight copy, not
another dynamo trace and another set of CUDA graphs.

Warm shapes: a worker can compile (architecture, jobs per batch, latent size) shapes when it
starts, before it takes a job, on a UNet of that architecture with random weights; that UNet
becomes the architecture's stage, so the first job of any checkpoint of it finds the graphs
compiled and recorded.

Rows of the UNet are independent (GroupNorm and attention work per sample), so a padded row
changes no real row: the compiled output equals eager within float tolerance (the test in
tests/models/test_compiled.py holds it to the oracle's tolerances)."""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from farm.models.arch import ARCH_FAMILY
from farm.models.attention import fuse_qkv
from farm.models.compile_config import DEFAULT_BUCKETS, CompileConfig, WarmShape  # noqa: F401 (re-exported)
from farm.models.compiled_stage import StagedRunner, WeightStage, layout_key, module_bytes, stage_of
from farm.sampling.stage import run_sampling

log = logging.getLogger(__name__)

GRAPH_SPLIT_ROWS = 64  # diffusers' Upsample2D branches on batch >= 64: a graph on each side
_ATTR = "_farm_compiled"
PROMPT_TOKENS = 77  # one CLIP chunk: the context length of a plain prompt


def configure_inductor_cache(cache_dir: Path) -> Path:
    """Point inductor's caches (FX graphs, Triton kernels, autotuning) at a folder that
    outlives the worker. Must run before the first compile of the process; an operator's
    own TORCHINDUCTOR_CACHE_DIR wins."""
    cache_dir = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir)))
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
    except Exception:  # an inductor without the switch: the environment variable stands
        pass
    return cache_dir


def _raise_recompile_limit(limit: int = 64) -> None:
    """Every (checkpoint, latent size) is one dynamo cache entry on UNet.forward; the default
    limit of 8 would silently fall back to eager after a few checkpoints."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * limit)


@dataclass
class ShapeStats:
    """What one (latent size, bucket) cost: the first call (compile and graph recording) and
    the calls after it."""

    first_call_s: float = 0.0
    calls: int = 0


@dataclass
class RunnerStats:
    shapes: dict[str, ShapeStats] = field(default_factory=dict)  # "rows x C x H x W" -> stats
    padded_rows: int = 0  # rows run only to fill a bucket
    rows: int = 0  # real rows
    fallback: str | None = None  # why the runner went back to eager, if it did

    @property
    def compile_s(self) -> float:
        return sum(s.first_call_s for s in self.shapes.values())


class CompiledUNet:
    """Callable like the UNet's eps path: (x, timestep, embeds, added) -> eps, in the UNet's
    dtype. Pads rows to a bucket, runs the compiled module, returns the real rows (copied
    out of the CUDA graph's memory, which the next replay overwrites)."""

    def __init__(self, unet: torch.nn.Module, config: CompileConfig, device: torch.device, label: str = ""):
        self.unet, self.config, self.device, self.label = unet, config, device, label
        mode = config.mode if device.type == "cuda" else None
        _raise_recompile_limit()
        self.fused_layers = fuse_qkv(unet) if config.fused_qkv else 0
        self._memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        unet.to(memory_format=self._memory_format)
        self._compiled = torch.compile(unet, backend=config.backend, mode=mode if config.backend == "inductor"
                                       else None, dynamic=None)
        self._cuda_graphs = device.type == "cuda" and mode is not None and "reduce-overhead" in mode
        self.stats = RunnerStats()
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor,
                 added: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if self.stats.fallback is not None:
            return self._eager(x, timestep, embeds, added)
        rows = x.shape[0]
        bucket = self.config.bucket(rows)
        args = [_pad(t, bucket) for t in (x, timestep, embeds)]
        args[0] = args[0].contiguous(memory_format=self._memory_format)
        added_p = None if added is None else {k: _pad(v, bucket) for k, v in added.items()}
        for t in [*args, *(added_p or {}).values()]:
            torch._dynamo.maybe_mark_dynamic(t, 0)  # one graph for every bucket
        key = "x".join(str(d) for d in args[0].shape) + f" ctx{embeds.shape[1]}"
        with self._lock:
            stats = self.stats.shapes.setdefault(key, ShapeStats())
            first = stats.calls == 0
            self.stats.rows += rows
            self.stats.padded_rows += bucket - rows
        started = time.perf_counter()
        try:
            if self._cuda_graphs:
                adopt_cuda_graph_state()
                torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are ours already
            out = self._compiled(args[0], args[1], encoder_hidden_states=args[2], added_cond_kwargs=added_p,
                                 return_dict=False)[0]
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a compiler fault must not fail jobs: eager from now on
            self.stats.fallback = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log.warning("compiled UNet %s failed (%s); running eager", self.label, self.stats.fallback,
                        exc_info=True)  # where it failed: what an operator's bug report needs
            self.unet.to(memory_format=torch.contiguous_format)  # eager convolutions prefer NCHW here
            return self._eager(x, timestep, embeds, added)
        out = out[:rows].clone()
        if first:
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            stats.first_call_s = time.perf_counter() - started
            log.info("compiled UNet %s for %s in %.1f s", self.label, key, stats.first_call_s)
        stats.calls += 1
        return out

    def _eager(self, x, timestep, embeds, added) -> torch.Tensor:
        return self.unet(x, timestep, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]


def adopt_cuda_graph_state() -> None:
    """Give this thread the CUDA graph trees' per-thread state if it lacks it.

    torch keeps the graph trees' managers in thread-local state that only the thread which
    imported inductor (and autograd's threads) receive. Before torch 2.13 (pytorch issue
    123177) any other thread's first reduce-overhead call failed with a bare AssertionError:
    on an H200 under torch 2.11 every compiled UNet in the farm's sampling thread fell back to
    eager that way. Newer torch sets the state up lazily, and then this finds it present."""
    try:
        from torch._inductor import cudagraph_trees as trees
    except ImportError:  # an inductor without graph trees: nothing to set up
        return
    state = trees.local
    if hasattr(state, "tree_manager_containers") or torch._C._is_key_in_tls("tree_manager_containers"):
        return
    state.tree_manager_containers = {}
    state.tree_manager_locks = defaultdict(threading.Lock)
    # stashed as the importing thread's are, so threads started from here inherit them
    torch._C._stash_obj_in_tls("tree_manager_containers", state.tree_manager_containers)
    torch._C._stash_obj_in_tls("tree_manager_locks", state.tree_manager_locks)


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Rows appended by repeating the last one (a real input, so no NaN paths in padding)."""
    if t.shape[0] == rows:
        return t.contiguous()
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])]).contiguous()


class UNetCompiler:
    """One per worker (or local renderer): hands out the compiled runner of each loaded UNet.
    UNets of one layout share a stage (farm.models.compiled_stage): compiled once, fed the
    batch's checkpoint weights. `set_aside(nbytes)` is told each new stage's size, so the
    checkpoints' device budget shrinks by it."""

    def __init__(self, config: CompileConfig, device: torch.device, state_dir: Path | None = None,
                 set_aside: Callable[[int], None] | None = None):
        self.config, self.device = config, device
        self.enabled = config.active(device)
        self._set_aside = set_aside
        self._stages: dict[str, WeightStage] = {}  # layout_key -> its stage, for the worker's life
        self._lock = threading.Lock()
        self.warmed: dict[str, float] = {}  # "arch jobs x h x w" -> seconds its warm-up took
        self.warmed_decoders: dict[str, float] = {}  # "arch rows x h x w" -> seconds (VAE decoder)
        if self.enabled:
            cache = config.cache_dir or (Path(state_dir) / "inductor" if state_dir is not None else None)
            if cache is not None:
                self.cache_dir = configure_inductor_cache(cache)

    def _compiled(self, label: str) -> Callable[[torch.nn.Module], "CompiledUNet"]:
        return lambda module: CompiledUNet(module, self.config, self.device, label)

    def _set_aside_for(self, unet: torch.nn.Module) -> None:
        """Before a stage of `unet`'s size is allocated: the checkpoints' budget gives way."""
        if self._set_aside is not None:
            self._set_aside(module_bytes(unet))

    def runner(self, unet: torch.nn.Module, label: str = "", layout: str = "unet") -> Callable[..., Any] | None:
        """The compiled runner of this UNet, or None when compiling is off. `label` names the
        checkpoint, `layout` its architecture (the stage is "unet:<layout>" in reports)."""
        if not self.enabled:
            return None
        return self._staged(unet, label, f"unet:{layout}", self._compiled)

    def decoder(self, vae: torch.nn.Module, label: str = "", layout: str = "vae") -> Callable[..., Any] | None:
        """The compiled decode of this VAE (latents -> pixels), or None when compiling (or its
        VAE lever) is off. VAEs of one layout share a stage too ("vae:<layout>")."""
        if not self.enabled or not self.config.vae:
            return None
        from farm.models.compiled_vae import CompiledDecoder

        return self._staged(vae, label, f"vae:{layout}",
                            lambda name: lambda module: CompiledDecoder(module, self.config, name))

    def _staged(self, module: torch.nn.Module, label: str, stage_label: str, compiled) -> StagedRunner:
        """The runner of `module` on its layout's stage, made (and the stage with it) on first use."""
        with self._lock:
            found = module.__dict__.get(_ATTR)
            if found is None:
                key = f"{stage_label.split(':')[0]} {layout_key(module)}"
                stage = self._stages.get(key)
                if stage is None:
                    self._set_aside_for(module)
                    stage = self._stages[key] = stage_of(module, compiled(stage_label), stage_label)
                stage.users.add(label)
                found = StagedRunner(stage, module)
                object.__setattr__(module, _ATTR, found)  # bypass nn.Module: not a child module
            return found

    def warm(self, dtype: torch.dtype, decode_pixels: int | None = None) -> dict[str, float]:
        """Compile the configured warm shapes now (nothing when compiling is off); returns
        seconds per shape, which report() lists under "warm". A shape that fails to compile
        is logged and skipped: warming must never keep a worker from starting. With
        `decode_pixels` (what one VAEDecode call takes at most) the VAE decoder of each shape
        is warmed too (`warmed_decoders`)."""
        if not self.enabled or not self.config.warm_shapes:
            return {}
        for arch in dict.fromkeys(shape[0] for shape in self.config.warm_shapes):
            unet = _random_unet(arch, self.device, dtype)
            key = f"unet {layout_key(unet)}"
            with self._lock:
                stage = self._stages.get(key)
                if stage is None:  # the random UNet is the stage: checkpoints of its layout reuse it
                    self._set_aside_for(unet)
                    label = f"unet:{ARCH_FAMILY[arch].value}"
                    stage = self._stages[key] = WeightStage(unet, self._compiled(label), label)
            runner = stage.runner
            unet = stage.module
            # the largest shape first, so a log reads as the compiles happen: shapes on one
            # side of GRAPH_SPLIT_ROWS share a graph (the first compiles it, the others record
            # their CUDA graphs), each side compiles its own
            shapes = sorted((s for s in self.config.warm_shapes if s[0] == arch), key=lambda s: -s[1] * s[2] * s[3])
            for _, jobs, height, width in shapes:
                key = f"{arch} {jobs}x{height}x{width}"
                started = time.perf_counter()
                call = functools.partial(_call_on_dummies, runner, unet, 2 * jobs, height, width)
                try:
                    # Twice, on the sampling thread, under inference mode, as jobs call it. CUDA
                    # graph trees run a shape once (the compile's call) and record its graph on
                    # the second call. Recorded here, at once: when a job's first call recorded
                    # it after a checkpoint load, cuDNN failed a device allocation inside the
                    # capture (CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED, then
                    # cudaErrorStreamCaptureInvalidated: every warmed bench compile process on an
                    # H100, torch 2.11; benchmarks/warm_capture.py tells the variants apart).
                    run_sampling(self.device, call)
                    if runner.stats.fallback is None:
                        run_sampling(self.device, call)
                except Exception as exc:  # out of memory, mostly: jobs will find their own size
                    runner.stats.fallback = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                if runner.stats.fallback is not None:
                    log.warning("warming %s failed: %s", key, runner.stats.fallback)
                    runner.stats.fallback = None
                    continue
                with self._lock:
                    self.warmed[key] = time.perf_counter() - started
            del runner, unet
            if decode_pixels and self.config.vae:
                self._warm_decoder(arch, shapes, dtype, decode_pixels)
        log.info("warmed compiled UNet shapes in %.1f s: %s", sum(self.warmed.values()), self.warmed)
        return dict(self.warmed)

    def _warm_decoder(self, arch: str, shapes: list[WarmShape], dtype: torch.dtype, decode_pixels: int) -> None:
        """The architecture's VAE decoder (a random VAE as the stage, as for the UNet), called as
        VAEDecode calls it for each shape: a batch's rows (up to decode_pixels), then one row,
        a graph of its own. In that order whichever job decodes first: a first call of another
        row count traced differently and missed inductor's disk cache on an H100 (call 9)."""
        from farm.models.compiled_vae import CompiledDecoder

        vae = _random_vae(arch, self.device, dtype)
        label = f"vae:{ARCH_FAMILY[arch].value}"
        with self._lock:
            stage = self._stages.get(f"vae {layout_key(vae)}")
            if stage is None:  # the random VAE is the stage: checkpoints of its layout reuse it
                self._set_aside_for(vae)
                stage = self._stages[f"vae {layout_key(vae)}"] = WeightStage(
                    vae, lambda module: CompiledDecoder(module, self.config, label), label)
        decode, module = stage.runner, stage.module
        scale = 2 ** (len(module.config.block_out_channels) - 1)  # latent to pixel side
        dtype_of_vae = next(module.parameters()).dtype
        for _, jobs, height, width in shapes:
            rows = max(1, min(jobs, decode_pixels // (height * width * scale * scale)))
            key = f"{arch} {rows}x{height}x{width}"
            started = time.perf_counter()
            try:
                for n in dict.fromkeys((rows, 1)):
                    latents = torch.randn(n, module.config.latent_channels, height, width, device=self.device,
                                          dtype=dtype_of_vae)
                    with torch.inference_mode():
                        decode(latents)
            except Exception as exc:  # out of memory, mostly: jobs will find their own size
                decode.fallback = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            if decode.fallback is not None:
                log.warning("warming the VAE decoder %s failed: %s", key, decode.fallback)
                decode.fallback = None
                continue
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            with self._lock:
                self.warmed_decoders[key] = time.perf_counter() - started
        log.info("warmed compiled VAE decoders: %s", self.warmed_decoders)

    def report(self) -> dict[str, Any]:
        """For the bench and /workers: compile seconds and shapes per stage (with the
        checkpoints it ran and its weight copies), compile seconds per VAE decoder."""
        with self._lock:
            stages = list(self._stages.values())
        report: dict[str, Any] = {}
        for st in stages:
            r = st.runner
            if isinstance(r, CompiledUNet):
                entry = {"compile_s": round(r.stats.compile_s, 2), "fallback": r.stats.fallback,
                         "fused_qkv_layers": r.fused_layers,
                         "rows": r.stats.rows, "padded_rows": r.stats.padded_rows,
                         "shapes": {k: {"first_call_s": round(s.first_call_s, 2), "calls": s.calls}
                                    for k, s in r.stats.shapes.items()}}
            else:  # a VAE decoder
                entry = {"compile_s": round(r.first_call_s, 2), "fallback": r.fallback, "calls": r.calls}
            copy_gpu_s = st.copy_gpu_s()  # None off CUDA
            copy_gpu_s = None if copy_gpu_s is None else round(copy_gpu_s, 4)
            report[st.label] = {**entry, "checkpoints": sorted(st.users), "weight_copies": st.copies,
                                "weight_copy_s": round(st.copy_s, 4), "weight_copy_gpu_s": copy_gpu_s,
                                "stage_gib": round(st.nbytes / 2**30, 2)}
        return report


def _random_unet(arch: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A UNet of the architecture's shipped config, random weights, set up as loaded ones are
    (device, dtype, eval, no gradients, the attention backend): the same graph to compile."""
    from diffusers import UNet2DConditionModel

    from farm.models.arch import arch_info
    from farm.models.attention import apply_attention_backend

    with torch.device(device):  # initialised where it runs: SDXL's 2.6 B weights take a minute on a CPU
        unet = UNet2DConditionModel.from_config(dict(arch_info(arch).configs.unet)).to(dtype)
    unet.eval().requires_grad_(False)
    apply_attention_backend(unet, None)
    return unet


def _random_vae(arch: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The architecture's VAE with random weights, set up as load_checkpoint sets a loaded
    one up (its dtype from choose_vae_dtype beside models in `dtype`, eval, no gradients,
    the attention backend): the same decoder graph to compile."""
    from diffusers import AutoencoderKL

    from farm.models.arch import arch_info
    from farm.models.attention import apply_attention_backend
    from farm.models.device import choose_vae_dtype

    info = arch_info(arch)
    with torch.device(device):
        vae = AutoencoderKL.from_config(dict(info.configs.vae))
    vae = torch.nn.Module.to(vae, dtype=choose_vae_dtype(info.arch, device, dtype))
    vae.eval().requires_grad_(False)
    apply_attention_backend(vae, None)  # on the VAE alone: the processors a loaded one gets
    return vae


def _call_on_dummies(runner: Callable[..., Any], unet: torch.nn.Module, rows: int, height: int, width: int) -> Any:
    return runner(*_dummy_inputs(unet, rows, height, width))


def _dummy_inputs(unet: torch.nn.Module, rows: int, height: int, width: int) -> tuple:
    """(x, timestep, embeds, added) of `rows` rows as the sampler passes them (timestep in
    float32, the rest in the UNet's dtype)."""
    config, param = unet.config, next(unet.parameters())
    make = dict(device=param.device, dtype=param.dtype)
    x = torch.randn(rows, config.in_channels, height, width, **make)
    timestep = torch.full((rows,), 500.0, device=param.device)
    embeds = torch.randn(rows, PROMPT_TOKENS, config.cross_attention_dim, **make)
    added = None
    if config.addition_embed_type == "text_time":  # SDXL: pooled text and size conditioning
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(rows, pooled, **make), "time_ids": torch.randn(rows, 6, **make)}
    return x, timestep, embeds, added
