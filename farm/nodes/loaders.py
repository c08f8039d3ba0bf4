"""Loader nodes: a checkpoint file from models/checkpoints becomes MODEL, CLIP and VAE."""
from __future__ import annotations

from pathlib import PurePosixPath

from farm.models.arch import Arch
from farm.models.store import PICKLE_EXTENSIONS
from farm.nodes.spec import InputSpec, Node, NodeContext, NodeSpec, OutputSpec
from farm.nodes.values import DiffusionModel, VaeModel
from farm.sampling.model_sampling import DiscreteSchedule
from farm.text.encode import ClipTextEncoder


def checkpoint_names(ctx: NodeContext) -> list[str]:
    return ctx.models.names("checkpoints")


class CheckpointLoaderSimple(Node):
    spec = NodeSpec(
        class_type="CheckpointLoaderSimple",
        display_name="Load Checkpoint",
        category="loaders",
        required=(
            InputSpec("ckpt_name", "COMBO", choices=checkpoint_names,
                      tooltip="Checkpoint file in models/checkpoints."),
        ),
        outputs=(OutputSpec("MODEL", "MODEL"), OutputSpec("CLIP", "CLIP"), OutputSpec("VAE", "VAE")),
        description="Loads a safetensors checkpoint: the denoising model, its text encoder and its VAE.",
    )

    @classmethod
    def validate_inputs(cls, ctx: NodeContext, ckpt_name: str) -> str | None:
        # Pickle files are listed on purpose (see ModelFolders.names): picking one must
        # get this explanation, not "value not in list".
        suffix = PurePosixPath(ckpt_name).suffix.lower()
        if suffix in PICKLE_EXTENSIONS:
            return (f"{ckpt_name} is a pickle file ({suffix}); loading it could run arbitrary code, so the farm "
                    f"only loads safetensors. Convert it to .safetensors and pick the converted file.")
        return None

    def run(self, rc, ckpt_name: str):
        loaded = rc.models.checkpoint(ckpt_name)
        family = loaded.arch.arch
        compiler = getattr(rc.models, "compiler", None)  # farm.models.compiled.UNetCompiler, if any
        runner = compiler.runner(loaded.unet, ckpt_name, family.value) if compiler is not None else None
        model = DiffusionModel(loaded.unet, DiscreteSchedule.sd(), loaded.latent_scale_factor,
                               needs_time_ids=family is not Arch.SD15, checkpoint_name=ckpt_name, runner=runner,
                               aesthetic_ids=family is Arch.SDXL_REFINER)
        if family is Arch.SDXL:
            clip = ClipTextEncoder.sdxl(*loaded.text_encoders, *loaded.tokenizers)
        elif family is Arch.SDXL_REFINER:
            clip = ClipTextEncoder.sdxl_refiner(loaded.text_encoders[0], loaded.tokenizers[0])
        else:
            clip = ClipTextEncoder.sd1(loaded.text_encoders[0], loaded.tokenizers[0])
        decoder = compiler.decoder(loaded.vae, ckpt_name, family.value) if compiler is not None else None
        return model, clip, VaeModel(loaded.vae, compiled_decode=decoder)
