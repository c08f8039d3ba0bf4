"""The values that flow on ComfyUI's sockets (MODEL, VAE, LATENT, IMAGE ...), as farm
represents them. CLIP is farm.text.encode.ClipTextEncoder; CONDITIONING is
farm.sampling.denoiser.Conditioning."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch

from farm.sampling.step_cache import StepCacheSettings
from farm.sampling.stop import StopCheck, checked_blocks


@dataclass(frozen=True, eq=False)
class DiffusionModel:
    """MODEL: a UNet with the noise schedule it was trained on."""

    owned_by_provider: ClassVar[bool] = True  # the model provider owns (and frees) its memory

    unet: torch.nn.Module
    schedule: object  # farm.sampling.model_sampling.DiscreteSchedule
    latent_scale: float  # VAE latent -> the UNet's latent space (0.18215 SD1.x, 0.13025 SDXL)
    needs_time_ids: bool  # SDXL's added conditioning (pooled text + size/crop ids)
    checkpoint_name: str
    # farm.models.compiled.CompiledUNet (same eps, compiled and batch-padded), None: eager
    runner: Callable[..., torch.Tensor] | None = None
    # LoRAs (farm.models.lora.BoundLora) to add while sampling; the resident UNet itself
    # is never left changed, so the base and every LoRA variant of it share one copy.
    loras: tuple = ()
    aesthetic_ids: bool = False  # the SDXL refiner: its time ids end in an aesthetic score
    # the EasyCache node's settings (farm.sampling.step_cache): skip predictable UNet calls,
    # an approximation the workflow opts into; None: every step runs
    step_cache: "StepCacheSettings | None" = None

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """The UNet with this value's LoRAs applied in place, restored bit-exactly on exit."""
        if not self.loras:
            yield
            return
        from farm.models.lora import patched
        from farm.models.lora_keys import UNET_ROOT

        with patched({UNET_ROOT: self.unet}, self.loras):
            yield

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def eps(self, x_in: torch.Tensor, timestep: torch.Tensor, cond) -> torch.Tensor:
        """The UNet's noise prediction, computed in the model's dtype, returned in float32
        (the sampler's arithmetic stays in float32, as ComfyUI's does)."""
        added = None
        if self.needs_time_ids:
            added = {"text_embeds": cond.pooled.to(self.device, self.dtype),
                     "time_ids": cond.time_ids.to(self.device, self.dtype)}
        x_in, timestep = x_in.to(self.device, self.dtype), timestep.to(self.device)
        embeds = cond.embeds.to(self.device, self.dtype)
        residuals = {}
        if getattr(cond, "control", ()):  # ControlNets: their residuals join the UNet's skips (eager path)
            from farm.models.controlnet import control_residuals

            found = control_residuals(cond, x_in, timestep, self.schedule, added, self.dtype)
            if found is not None:
                residuals = {"down_block_additional_residuals": found[0], "mid_block_additional_residual": found[1]}
        if self.runner is not None and not residuals:
            return self.runner(x_in, timestep, embeds, added).float()
        out = self.unet(x_in, timestep, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False,
                        **residuals)[0]
        return out.float()


@dataclass(frozen=True, eq=False)
class VaeModel:
    """VAE: pixels [B,H,W,C] in 0..1 <-> raw latents (not multiplied by the scale factor,
    which is what ComfyUI's LATENT holds too)."""

    owned_by_provider: ClassVar[bool] = True

    vae: torch.nn.Module
    downscale: int = 8
    compiled_decode: Callable[[torch.Tensor], torch.Tensor] | None = None  # farm.models.compiled_vae

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, check: StopCheck | None = None) -> torch.Tensor:
        """`check` (an interrupt) runs before each of the decoder's resnet blocks, which see
        the whole batch: a big batch stops within one block."""
        latents = latents.to(self.device, self.dtype)
        if self.compiled_decode is not None:  # one graph: an interrupt is honoured before it only
            if check is not None:
                check()
            x = self.compiled_decode(latents)
        else:
            with checked_blocks([self.vae.decoder], check):
                x = self.vae.decode(latents, return_dict=False)[0]
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu()

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, check: StopCheck | None = None) -> torch.Tensor:
        # Crop to a multiple of the VAE's downscale, as ComfyUI does, so H/8 is exact.
        h = pixels.shape[1] // self.downscale * self.downscale
        w = pixels.shape[2] // self.downscale * self.downscale
        x = pixels[:, :h, :w, :3].permute(0, 3, 1, 2) * 2.0 - 1.0
        with checked_blocks([self.vae.encoder], check):
            dist = self.vae.encode(x.to(self.device, self.dtype), return_dict=False)[0]
        return dist.mode().float().cpu()  # the mean: encoding is deterministic, as in ComfyUI


@dataclass(frozen=True, eq=False)
class Latent:
    """LATENT: raw VAE latents [B, 4, H/8, W/8], float32 on the CPU."""

    samples: torch.Tensor
    # ComfyUI's optional LATENT keys: noise_mask [B,1,H,W] at pixel size (1 = repaint, 0 =
    # keep); batch_index: the rows' places in the batch they came from, so their initial
    # noise is the noise those rows had there (LatentFromBatch, RepeatLatentBatch).
    noise_mask: torch.Tensor | None = None
    batch_index: tuple[int, ...] | None = None
