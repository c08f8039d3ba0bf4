"""The samplers: KSampler and KSamplerAdvanced, under ComfyUI's names and ranges."""
from __future__ import annotations

from farm.nodes.ksampling import SamplerCall, run_sampler_calls
from farm.nodes.spec import MAX_SEED, MAX_STEPS, InputSpec, Node, NodeSpec, OutputSpec
from farm.sampling.samplers import ROW_SCHEDULE_SAMPLERS, SAMPLERS
from farm.sampling.schedules import SCHEDULERS

# The choice lists are the registries' names, so a name the farm cannot run is refused
# at validation (value_not_in_list) instead of being replaced by another sampler.
SAMPLER_NAMES = tuple(SAMPLERS)
SCHEDULER_NAMES = tuple(SCHEDULERS)


def _seed(name: str) -> InputSpec:
    return InputSpec(name, "INT", default=0, min=0, max=MAX_SEED, control_after_generate=True, batchable=True,
                     tooltip="Seed of the initial noise.")


def _steps() -> InputSpec:
    return InputSpec("steps", "INT", default=20, min=1, max=MAX_STEPS, cap="max_steps",
                     batchable_when=lambda inputs: inputs.get("sampler_name") in ROW_SCHEDULE_SAMPLERS,
                     tooltip="Number of denoising steps.")


def _cfg() -> InputSpec:
    return InputSpec("cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01, batchable=True,
                     tooltip="Classifier-free guidance scale: how strongly the prompt steers.")


_SAMPLER = InputSpec("sampler_name", "COMBO", choices=SAMPLER_NAMES, tooltip="Sampling algorithm.")
_SCHEDULER = InputSpec("scheduler", "COMBO", choices=SCHEDULER_NAMES, tooltip="Noise schedule (sigmas).")
_MODEL = InputSpec("model", "MODEL", tooltip="The denoising model.")
_POSITIVE = InputSpec("positive", "CONDITIONING", tooltip="What the image should show.")
_NEGATIVE = InputSpec("negative", "CONDITIONING", tooltip="What the image should avoid.")
_LATENT = InputSpec("latent_image", "LATENT", tooltip="Latents to denoise.")


class KSampler(Node):
    spec = NodeSpec(
        class_type="KSampler",
        display_name="KSampler",
        category="sampling",
        required=(
            _MODEL, _seed("seed"), _steps(), _cfg(), _SAMPLER, _SCHEDULER, _POSITIVE, _NEGATIVE, _LATENT,
            InputSpec("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01,
                      tooltip="Fraction of the schedule to run; below 1 keeps part of the input latent."),
        ),
        outputs=(OutputSpec("LATENT", "LATENT"),),
        description="Denoises a latent with a model, guided by positive and negative conditioning.",
    )

    @staticmethod
    def _call(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise):
        return SamplerCall(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise)

    def run(self, rc, **inputs):
        return (run_sampler_calls(rc, [self._call(**inputs)])[0],)

    def run_batch(self, rc, inputs: list[dict]):
        return [(latent,) for latent in run_sampler_calls(rc, [self._call(**i) for i in inputs])]


class KSamplerAdvanced(Node):
    spec = NodeSpec(
        class_type="KSamplerAdvanced",
        display_name="KSampler (Advanced)",
        category="sampling",
        required=(
            _MODEL,
            InputSpec("add_noise", "COMBO", choices=("enable", "disable")),
            _seed("noise_seed"), _steps(), _cfg(), _SAMPLER, _SCHEDULER, _POSITIVE, _NEGATIVE, _LATENT,
            InputSpec("start_at_step", "INT", default=0, min=0, max=10000),
            InputSpec("end_at_step", "INT", default=10000, min=0, max=10000),
            InputSpec("return_with_leftover_noise", "COMBO", choices=("disable", "enable")),
        ),
        outputs=(OutputSpec("LATENT", "LATENT"),),
    )

    @staticmethod
    def _call(model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
              start_at_step, end_at_step, return_with_leftover_noise):
        return SamplerCall(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                           add_noise=add_noise == "enable", start_step=start_at_step, end_step=end_at_step,
                           force_full_denoise=return_with_leftover_noise == "disable")

    def run(self, rc, **inputs):
        return (run_sampler_calls(rc, [self._call(**inputs)])[0],)

    def run_batch(self, rc, inputs: list[dict]):
        return [(latent,) for latent in run_sampler_calls(rc, [self._call(**i) for i in inputs])]
