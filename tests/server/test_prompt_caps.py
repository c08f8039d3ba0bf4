"""The caps of farm.settings.Limits on POST /prompt and /batch: every breach is a 400 in
ComfyUI's {"error", "node_errors"} shape, given before anything is queued, and the 400 is
itself valid JSON (no NaN echoed back)."""
from __future__ import annotations

import copy
import json
import os
from importlib.resources import files

import pytest

from farm.settings import Limits

WORKFLOW = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())


@pytest.fixture
def capped_server(start_server, farm_root, tiny_models):
    os.symlink(tiny_models / "checkpoints", farm_root / "models" / "checkpoints")
    return start_server(limits=Limits(max_prompt_chars=1000, max_prompt_bytes=200_000, max_json_depth=32))


def post_raw(srv, text: str, path: str = "/prompt"):
    with srv.client() as http:
        return http.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


def strict_json(answer) -> dict:
    """The body parsed as strict JSON: NaN or Infinity in it would raise."""
    def refuse(constant):
        raise AssertionError(f"the answer carries {constant}, which is not JSON")
    return json.loads(answer.text, parse_constant=refuse)


@pytest.mark.parametrize("node,name", [("3", "cfg"), ("3", "denoise"), ("5", "width"), ("3", "steps")])
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_a_400(capped_server, node, name, constant):
    prompt = copy.deepcopy(WORKFLOW)
    prompt[node]["inputs"][name] = "@@"
    text = json.dumps({"prompt": prompt}).replace('"@@"', constant)
    answer = post_raw(capped_server, text)
    assert answer.status_code == 400, answer.text
    body = strict_json(answer)
    assert body["node_errors"] == {}
    assert body["error"]["type"] == "prompt_value_not_finite"
    assert body["error"]["extra_info"]["path"] == f"prompt.{node}.inputs.{name}"


def test_non_finite_in_extra_data_is_a_400(capped_server):
    text = json.dumps({"prompt": WORKFLOW, "extra_data": {"x": "@@"}}).replace('"@@"', "NaN")
    answer = post_raw(capped_server, text)
    assert answer.status_code == 400
    assert strict_json(answer)["error"]["extra_info"]["path"] == "extra_data.x"


def test_deep_nesting_is_a_400_not_a_recursion_error(capped_server):
    for depth in (40, 5_000, 100_000):  # above the cap; above Python's recursion limit; the probe's
        answer = post_raw(capped_server, '{"prompt": ' + "[" * depth + "]" * depth + "}")
        assert answer.status_code == 400, (depth, answer.text[:200])
        strict_json(answer)
    answer = post_raw(capped_server, '{"prompt": ' + "[" * 40 + "]" * 40 + "}")
    assert answer.json()["error"]["type"] == "prompt_too_deep"
    assert answer.json()["error"]["extra_info"]["limit"] == 32


def test_deep_nesting_on_batch_is_a_400(capped_server):
    answer = post_raw(capped_server, '{"prompt": {"a": ' + "[" * 100_000 + "]" * 100_000 + '}, "overrides": [{}]}',
                      "/batch")
    assert answer.status_code == 400


def test_a_huge_integer_is_a_400(capped_server):
    answer = post_raw(capped_server, '{"prompt": {"3": ' + "9" * 5000 + "}}")
    assert answer.status_code == 400


def test_prompt_text_over_the_per_string_cap(capped_server):
    prompt = copy.deepcopy(WORKFLOW)
    prompt["6"]["inputs"]["text"] = "a red fox " * 101  # 1010 characters, cap 1000
    answer = post_raw(capped_server, json.dumps({"prompt": prompt}))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "prompt_text_too_long"
    assert error["extra_info"] == {"path": "prompt.6.inputs.text", "limit": 1000}
    assert "1,010 characters" in error["details"] and "red fox" not in json.dumps(error)
    prompt["6"]["inputs"]["text"] = "a red fox " * 100  # exactly 1000: accepted (503: no farm here)
    assert post_raw(capped_server, json.dumps({"prompt": prompt})).status_code == 503


def test_total_string_bytes_over_the_cap(capped_server):
    prompt = copy.deepcopy(WORKFLOW)
    extra = {"extra_pnginfo": {"notes": ["x" * 900] * 300}}  # 270 kB in short strings, cap 200 kB
    answer = post_raw(capped_server, json.dumps({"prompt": prompt, "extra_data": extra}))
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "prompt_too_large"


def test_the_probe_64_mb_prompt_is_refused_quickly(start_server, farm_root, tiny_models):
    os.symlink(tiny_models / "checkpoints", farm_root / "models" / "checkpoints")
    srv = start_server()  # the default caps
    prompt = copy.deepcopy(WORKFLOW)
    prompt["6"]["inputs"]["text"] = "x" * (64 * 1024 * 1024)
    answer = post_raw(srv, json.dumps({"prompt": prompt}))
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "prompt_text_too_long"
    assert len(answer.content) < 2000


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/abs", "a/../../b", "a/"])
def test_filename_prefix_outside_the_output_folder_is_refused_at_submission(capped_server, prefix):
    prompt = copy.deepcopy(WORKFLOW)
    prompt["9"]["inputs"]["filename_prefix"] = prefix
    answer = post_raw(capped_server, json.dumps({"prompt": prompt}))
    assert answer.status_code == 400
    errors = answer.json()["node_errors"]["9"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert "filename_prefix" in errors[0]["details"]


def test_filename_prefix_with_a_subfolder_is_fine(capped_server):
    prompt = copy.deepcopy(WORKFLOW)
    prompt["9"]["inputs"]["filename_prefix"] = "renders/shot1"
    assert post_raw(capped_server, json.dumps({"prompt": prompt})).status_code == 503  # valid; no farm here
