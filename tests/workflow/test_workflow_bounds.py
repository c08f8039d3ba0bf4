"""farm.workflow.bounds and its place in prepare(): the caps hold on every entry point
(the Python API and the CLI call prepare as the server does), before anything is queued."""
import json
import math

import pytest

from farm.models.store import ModelFolders
from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from farm.settings import Limits
from farm.workflow.bounds import check_json
from farm.workflow.prepare import ValidationFailed, prepare

LIMITS = Limits(max_prompt_chars=100, max_prompt_bytes=1000, max_json_depth=8)


def test_a_plain_prompt_passes(txt2img):
    assert check_json(txt2img, Limits()) is None


@pytest.mark.parametrize("number,spelled", [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")])
def test_non_finite_numbers_are_named_by_path(number, spelled):
    error = check_json({"3": {"inputs": {"cfg": number}}}, LIMITS)
    assert error.type.value == "prompt_value_not_finite"
    assert error.extra_info == {"path": "prompt.3.inputs.cfg"}
    assert spelled in error.details
    json.dumps(error.to_comfy(), allow_nan=False)  # the error itself is valid JSON


def test_depth_is_checked_without_recursion():
    deep: list = []
    for _ in range(200_000):  # far past Python's recursion limit
        deep = [deep]
    error = check_json({"a": deep}, LIMITS)
    assert error.type.value == "prompt_too_deep" and error.extra_info["limit"] == 8
    assert check_json([[[[[[[[]]]]]]]], LIMITS) is None  # 8 deep: at the cap, fine


def test_string_caps():
    assert check_json({"t": "x" * 100}, LIMITS) is None
    error = check_json({"t": "x" * 101}, LIMITS)
    assert error.type.value == "prompt_text_too_long" and error.extra_info == {"path": "prompt.t", "limit": 100}
    assert check_json({"t": "x" * 101}, LIMITS, per_string=False) is None
    error = check_json({str(i): "é" * 50 for i in range(11)}, LIMITS)  # 100 bytes each in UTF-8: 1100
    assert error.type.value == "prompt_too_large"


def context(models, root, limits=None) -> NodeContext:
    return NodeContext(ModelFolders(models), root / "input", root / "output", root / "temp", limits or Limits())


def test_prepare_refuses_before_validating(txt2img, tiny_models, tmp_path):
    ctx = context(tiny_models, tmp_path, LIMITS)
    for overrides in ({"3.cfg": math.nan}, {"6.text": "x" * 101}):
        with pytest.raises(ValidationFailed) as caught:
            prepare(txt2img, default_registry(), ctx, overrides)
        assert caught.value.result.error.extra_info["path"].startswith(("overrides.", "prompt."))
        json.dumps(caught.value.result.to_comfy(), allow_nan=False)
    bad = json.loads(json.dumps(txt2img))
    bad["3"]["inputs"]["denoise"] = math.inf
    with pytest.raises(ValidationFailed, match="prompt.3.inputs.denoise is Infinity"):
        prepare(bad, default_registry(), ctx)


def test_prepare_refuses_a_prefix_outside_the_output_folder(txt2img, tiny_models, tmp_path):
    ctx = context(tiny_models, tmp_path)
    with pytest.raises(ValidationFailed, match="points outside the output folder") as caught:
        prepare(txt2img, default_registry(), ctx, {"9.filename_prefix": "../../elsewhere/x"})
    assert caught.value.result.node_errors["9"].class_type == "SaveImage"
    prepare(txt2img, default_registry(), ctx, {"9.filename_prefix": "renders/x"})
