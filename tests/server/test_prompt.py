"""POST /prompt and POST /batch up to the point where the farm is asked: every answer
here is given before anything is queued (ComfyUI's 400s), and a prompt that passes
validation reaches the farm, which this server does not have (503)."""
from __future__ import annotations

import copy
import json
import os
import uuid
from importlib.resources import files

import pytest

from farm.nodes.spec import Limits

WORKFLOW = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())


@pytest.fixture
def ckpt_server(start_server, farm_root, tiny_models):
    """A server whose models/checkpoints holds the tiny checkpoints the workflow names."""
    os.symlink(tiny_models / "checkpoints", farm_root / "models" / "checkpoints")
    return start_server(limits=Limits(max_width=512, max_height=512, max_batch_size=4, max_steps=30))


def post(srv, body, path="/prompt"):
    with srv.client() as http:
        return http.post(path, json=body) if not isinstance(body, bytes) else http.post(
            path, content=body, headers={"Content-Type": "application/json"})


def test_no_prompt(server):
    answer = post(server, {"client_id": "x"})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "no_prompt"
    assert answer.json()["node_errors"] == {}
    assert set(answer.json()["error"]) == {"type", "message", "details", "extra_info"}


def test_body_that_is_not_json(server):
    assert post(server, b"{not json").status_code == 400
    assert post(server, b"[1, 2]").status_code == 400


@pytest.mark.parametrize("prompt_id", ["not-a-uuid", str(uuid.uuid4()).upper(), uuid.uuid4().hex, 12345,
                                       "{" + str(uuid.uuid4()) + "}"])
def test_client_prompt_id_must_be_a_canonical_uuid(ckpt_server, prompt_id):
    answer = post(ckpt_server, {"prompt": WORKFLOW, "prompt_id": prompt_id})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_prompt_id"


def test_unknown_node_type(server):
    answer = post(server, {"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "missing_node_type"
    assert error["extra_info"]["class_type"] == "NoSuchNode"


def test_graph_without_output_node(ckpt_server):
    no_save = {k: v for k, v in WORKFLOW.items() if k != "9"}
    answer = post(ckpt_server, {"prompt": no_save})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "prompt_no_outputs"


def test_configured_limits_are_enforced(ckpt_server):
    too_big = copy.deepcopy(WORKFLOW)
    too_big["5"]["inputs"]["width"] = 1024  # the server allows 512
    too_many = copy.deepcopy(WORKFLOW)
    too_many["3"]["inputs"]["steps"] = 31
    for prompt, node, name in ((too_big, "5", "width"), (too_many, "3", "steps")):
        answer = post(ckpt_server, {"prompt": prompt})
        assert answer.status_code == 400
        body = answer.json()
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        errors = body["node_errors"][node]["errors"]
        assert errors[0]["type"] == "value_bigger_than_max"
        assert errors[0]["extra_info"]["input_name"] == name


def test_unknown_sampler_is_a_validation_error(ckpt_server):
    bad = copy.deepcopy(WORKFLOW)
    bad["3"]["inputs"]["sampler_name"] = "no_such_sampler"
    answer = post(ckpt_server, {"prompt": bad})
    assert answer.status_code == 400
    assert answer.json()["node_errors"]["3"]["errors"][0]["type"] == "value_not_in_list"


def test_valid_prompt_reaches_the_farm(ckpt_server):
    """It passes validation; this server has no farm to queue it in."""
    for body in ({"prompt": WORKFLOW}, {"prompt": WORKFLOW, "prompt_id": str(uuid.uuid4()), "client_id": "c"}):
        answer = post(ckpt_server, body)
        assert answer.status_code == 503, answer.text
        assert "no farm" in answer.json()["error"]


def test_batch_refuses_bad_override_keys_before_queueing(ckpt_server):
    cases = {
        "3seed": "must look like NODE_ID.INPUT",
        "99.seed": "no node '99'",
        "3.sed": "has no input 'sed'",
    }
    for key, message in cases.items():
        answer = post(ckpt_server, {"prompt": WORKFLOW, "overrides": [{"3.seed": 1}, {key: 2}]}, path="/batch")
        assert answer.status_code == 400, key
        body = answer.json()  # shaped as a variant that fails validation: ComfyUI's /prompt 400 and the index
        assert body["index"] == 1 and body["node_errors"] == {}
        assert body["error"]["type"] == "invalid_prompt"
        assert message in body["error"]["details"], body


def test_batch_reports_which_variant_fails(ckpt_server):
    answer = post(ckpt_server, {"prompt": WORKFLOW, "overrides": [{"3.seed": 1}, {"3.steps": 999}]}, path="/batch")
    assert answer.status_code == 400
    assert answer.json()["index"] == 1
    assert answer.json()["node_errors"]["3"]["errors"][0]["type"] == "value_bigger_than_max"


def test_batch_body_is_checked(ckpt_server):
    assert post(ckpt_server, {"prompt": WORKFLOW, "overrides": []}, path="/batch").status_code == 400
    assert post(ckpt_server, {"overrides": [{"3.seed": 1}]}, path="/batch").status_code == 400
    valid = post(ckpt_server, {"prompt": WORKFLOW, "overrides": [{"3.seed": 1}, {"3.seed": 2}]}, path="/batch")
    assert valid.status_code == 503  # valid; nowhere to queue it


def test_a_lone_surrogate_in_the_body_is_a_400_not_a_500(server):
    """Found by the HTTP fuzz suite: "\\ud800" is valid JSON but no text, so the 400 that
    echoed it could not be written."""
    answer = post(server, b'{"prompt": {"1": {"class_type": "\\ud800", "inputs": {}}}}')
    assert answer.status_code == 400
    assert "surrogate" in answer.json()["error"]["message"] + answer.json()["error"].get("details", "")
    assert answer.json()["node_errors"] == {}
