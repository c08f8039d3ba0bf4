"""CompileConfig, the farm's switch for compiled sampling, apart from the compiler: no torch,
so that a FarmConfig unpickles in the dispatcher and reads in the CLI without loading it.
farm.models.compiled re-exports it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from farm.errors import ConfigError
from farm.models.arch import ARCH_FAMILY

if TYPE_CHECKING:
    import torch

DEFAULT_BUCKETS = (2, 4, 8, 16, 32)  # UNet rows (jobs x 2 with CFG)
WarmShape = tuple[str, int, int, int]  # (architecture, jobs per batch, latent height, latent width)


@dataclass(frozen=True)
class CompileConfig:
    """The farm's switch for compiled sampling (FarmConfig.compile, `farm bench --no-compile`)."""

    enabled: bool | None = None  # None: on for CUDA devices, off on the CPU
    mode: str | None = "reduce-overhead"  # CUDA: inductor with CUDA graphs; the CPU always uses default
    backend: str = "inductor"  # "aot_eager" traces without generating code (tests of the code path)
    buckets: tuple[int, ...] = DEFAULT_BUCKETS  # UNet row counts a batch is padded up to
    cache_dir: Path | None = None  # inductor's on-disk cache; None: <farm root>/state/inductor
    warm_shapes: tuple[WarmShape, ...] = ()  # compiled when a worker starts, e.g. ("sd15", 8, 64, 64):
    # SD1.5, batches of 8 jobs (16 UNet rows with CFG), 512 x 512 px
    # The levers below change only the memory layout or which kernels run, not the maths;
    # their effect on images and speed is measured by benchmarks/gpu_profile.py.
    channels_last: bool = True  # the compiled UNet in NHWC: inductor then skips cuDNN's layout copies
    fused_qkv: bool = True  # one GEMM for attention's q, k, v (models.attention.fuse_qkv); SDPA only
    vae: bool = True  # the VAE decoder compiled too (inductor's default mode: no CUDA graphs)

    def __post_init__(self) -> None:
        for shape in self.warm_shapes:
            if (len(shape) != 4 or shape[0] not in ARCH_FAMILY
                    or not all(isinstance(n, int) and n > 0 for n in shape[1:])):
                raise ConfigError(f"warm shape {shape!r} is not (architecture, jobs, latent height, latent width) "
                                  f"with an architecture of {', '.join(ARCH_FAMILY)} and positive sizes, "
                                  "e.g. ('sd15', 8, 64, 64)")

    def active(self, device: torch.device) -> bool:
        return self.enabled if self.enabled is not None else device.type == "cuda"

    def bucket(self, rows: int) -> int:
        """The smallest bucket holding `rows`; beyond the largest, the rows themselves."""
        return next((b for b in sorted(self.buckets) if b >= rows), rows)
