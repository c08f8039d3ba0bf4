"""VAELoader: a VAE from models/vae (ComfyUI's "Load VAE"), for a checkpoint whose baked-in
VAE is worse (SD1.5 with vae-ft-mse) or broken in half precision (SDXL's fp16-fix VAE)."""
from __future__ import annotations

from farm.models.vae_file import load_vae_file
from farm.nodes.model_files import RecentModels, file_stamp, refuse_pickle
from farm.nodes.spec import InputSpec, Node, NodeContext, NodeSpec, OutputSpec
from farm.nodes.values import VaeModel

VAE_FOLDER = "vae"
LOADED_VAES = RecentModels(max_models=2)


def vae_names(ctx: NodeContext) -> list[str]:
    return ctx.models.names(VAE_FOLDER)


class VAELoader(Node):
    spec = NodeSpec(
        class_type="VAELoader",
        display_name="Load VAE",
        category="loaders",
        required=(InputSpec("vae_name", "COMBO", choices=vae_names, tooltip="VAE file in models/vae."),),
        outputs=(OutputSpec("VAE", "VAE"),),
        description="Loads a VAE (safetensors, LDM or diffusers key layout) to decode and encode latents.",
    )
    model_files = {"vae_name": VAE_FOLDER}

    @classmethod
    def validate_inputs(cls, ctx: NodeContext, vae_name: str) -> str | None:
        return refuse_pickle(vae_name)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, vae_name: str) -> str | None:
        return file_stamp(ctx, VAE_FOLDER, vae_name)

    def run(self, rc, vae_name: str):
        vae = LOADED_VAES.get(rc.node_ctx, VAE_FOLDER, vae_name, rc.device, rc.dtype, load_vae_file)
        return (VaeModel(vae),)
