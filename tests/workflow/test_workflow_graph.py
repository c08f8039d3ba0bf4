import json

import pytest

from farm.errors import WorkflowFormatError
from farm.workflow.graph import (
    Link,
    MalformedLink,
    NodeCall,
    load_workflow_file,
    parse_workflow,
)


def test_links_constants_and_value_lists_are_told_apart():
    wf = parse_workflow({
        "1": {"class_type": "A", "inputs": {"x": ["2", 0], "n": 5, "s": "text", "lst": {"__value__": [1, 2]},
                                              "bad": ["2", 0, 1], "flt": ["2", "0"]},
              "_meta": {"title": "First"}},
        "2": {"class_type": "B", "inputs": {}},
    })
    call = wf.nodes["1"]
    assert call == NodeCall("1", "A", {"x": Link("2", 0), "n": 5, "s": "text", "lst": [1, 2],
                                       "bad": MalformedLink(("2", 0, 1)), "flt": MalformedLink(("2", "0"))}, "First")
    assert call.links() == {"x": Link("2", 0)}
    assert call.constants() == {"n": 5, "s": "text", "lst": [1, 2]}
    assert wf.nodes["2"].title is None


def test_numeric_node_id_in_a_link_is_read_as_the_string_key():
    wf = parse_workflow({"1": {"class_type": "A", "inputs": {"x": [2, 1]}}})
    assert wf.nodes["1"].inputs["x"] == Link("2", 1)


def test_boolean_is_not_a_link_index():
    wf = parse_workflow({"1": {"class_type": "A", "inputs": {"x": ["2", True]}}})
    assert wf.nodes["1"].inputs["x"] == MalformedLink(("2", True))


def test_missing_class_type_is_kept_for_validation_to_report():
    wf = parse_workflow({"7": {"inputs": {}}})
    assert wf.nodes["7"].class_type is None


def test_to_api_round_trips():
    api = {"1": {"inputs": {"x": ["2", 0], "lst": {"__value__": ["a", 1]}, "n": 3, "bad": [1, 2, 3]},
                 "class_type": "A", "_meta": {"title": "T"}},
           "2": {"inputs": {}, "class_type": "B"}}
    assert parse_workflow(api).to_api() == api


@pytest.mark.parametrize("obj, fragment", [
    ([1, 2], "got a list"),
    ("text", "got a string"),
    ({"1": 5}, "node '1': expected an object"),
    ({"1": {"class_type": 5, "inputs": {}}}, "class_type must be a string"),
    ({"1": {"class_type": "A", "inputs": [1]}}, "inputs must be an object"),
    ({"1": {"class_type": "A", "inputs": {}, "_meta": {"title": 3}}}, "_meta.title must be a string"),
    ({"1": {"class_type": "A", "inputs": {"x": {"__value__": 3}}}}, "input 'x'"),
    ({"nodes": [], "links": []}, "UI-format"),
    ({"prompt": {"1": {"class_type": "A"}}, "client_id": "x"}, "POST /prompt body"),
])
def test_malformed_shapes_are_refused_with_a_precise_message(obj, fragment):
    with pytest.raises(WorkflowFormatError, match=None) as info:
        parse_workflow(obj)
    assert fragment in str(info.value)


def test_load_workflow_file_reports_bad_json_with_its_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"1": {"class_type": "A",\n  "inputs": {,}}}')
    with pytest.raises(WorkflowFormatError) as info:
        load_workflow_file(path)
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_load_workflow_file_missing_and_non_utf8(tmp_path):
    with pytest.raises(WorkflowFormatError, match="not found"):
        load_workflow_file(tmp_path / "nope.json")
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"1": "\xff"}')
    with pytest.raises(WorkflowFormatError, match="UTF-8"):
        load_workflow_file(path)


def test_load_workflow_file_reads_api_and_ui_format(tmp_path):
    path = tmp_path / "api.json"
    path.write_text(json.dumps({"9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}}))
    assert load_workflow_file(path).nodes["9"].inputs == {"images": Link("8", 0)}
    from pathlib import Path
    ui = Path(__file__).parent / "data" / "txt2img_ui.json"
    wf = load_workflow_file(ui)
    assert set(wf.nodes) == {"3", "4", "5", "6", "7", "8", "9"}
    assert wf.nodes["8"].inputs["vae"] == Link("4", 2)  # through the reroute
