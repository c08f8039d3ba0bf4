"""EasyCache: the opt-in step cache on MODEL (farm.sampling.step_cache says what it skips).

The node only attaches settings to the model; the sampler builds a fresh cache for each
run. A model with EasyCache never shares a sampler batch with another job's model (batches
group by the model value), so a job's skipped steps never depend on its batch mates."""
from __future__ import annotations

import dataclasses
import logging

from farm.nodes.spec import InputSpec, Node, NodeSpec, OutputSpec
from farm.nodes.values import DiffusionModel
from farm.sampling.step_cache import StepCacheSettings

log = logging.getLogger(__name__)


def _percent(name: str, default: float, tooltip: str) -> InputSpec:
    return InputSpec(name, "FLOAT", default=default, min=0.0, max=1.0, step=0.01, tooltip=tooltip)


class EasyCache(Node):
    spec = NodeSpec(
        class_type="EasyCache",
        display_name="EasyCache",
        category="advanced/debug",
        required=(
            InputSpec("model", "MODEL", tooltip="The model whose predictable sampling steps are skipped."),
            InputSpec("reuse_threshold", "FLOAT", default=0.2, min=0.0, max=3.0, step=0.01,
                      tooltip="Estimated output change, summed since the last computed step, that forces "
                              "the next step to run. Larger skips more steps and changes the image more."),
            _percent("start_percent", 0.15, "Share of the schedule after which steps may be skipped."),
            _percent("end_percent", 0.95, "Share of the schedule from which every step runs again."),
            InputSpec("verbose", "BOOLEAN", default=False, tooltip="Log the settings of each run."),
        ),
        outputs=(OutputSpec("MODEL", "MODEL"),),
        description="Skips sampling steps whose result can be predicted from the previous step (an "
                    "approximation: the image changes).",
    )

    @classmethod
    def validate_inputs(cls, ctx, start_percent: float, end_percent: float) -> str | None:
        if start_percent > end_percent:
            return f"start_percent ({start_percent}) is after end_percent ({end_percent}): no step could be skipped"
        return None

    def run(self, rc, model: DiffusionModel, reuse_threshold: float, start_percent: float, end_percent: float,
            verbose: bool):
        settings = StepCacheSettings(reuse_threshold, start_percent, end_percent)
        if verbose:
            log.info("EasyCache on %s: %s", model.checkpoint_name, settings)
        return (dataclasses.replace(model, step_cache=settings),)
