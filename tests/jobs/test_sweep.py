"""Reading a sweep: CSV columns named NODE_ID.INPUT, JSON lists, and set/product/zip
descriptions (YAML or JSON) that expand to many renders; a bad row is named by its number."""
import json

import pytest

from farm.errors import WorkflowFormatError
from jobs.sweep import expand, job_key, load_sweep


def test_csv_cells_are_json_when_they_parse_and_text_otherwise(tmp_path):
    path = tmp_path / "sweep.csv"
    path.write_text("3.seed,3.cfg,6.text,5.width\n1,7.5,a red fox,\n2,6,\"a fox, at night\",128\n")
    rows = load_sweep(path)
    assert [r.overrides for r in rows] == [
        {"3.seed": 1, "3.cfg": 7.5, "6.text": "a red fox"},  # an empty cell keeps the workflow's value
        {"3.seed": 2, "3.cfg": 6, "6.text": "a fox, at night", "5.width": 128},
    ]
    assert [r.label for r in rows] == ["row 1 (line 2 of sweep.csv)", "row 2 (line 3 of sweep.csv)"]


def test_a_csv_row_with_too_many_cells_is_named(tmp_path):
    path = tmp_path / "sweep.csv"
    path.write_text("3.seed\n1\n2,3\n")
    with pytest.raises(WorkflowFormatError, match=r"row 2 \(line 3 of sweep.csv\) has 2 cells"):
        load_sweep(path)


def test_json_sweep_is_a_list_of_objects(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps([{"3.seed": 1}, {"3.seed": 2, "6.text": "x"}]))
    assert [r.overrides for r in load_sweep(path)] == [{"3.seed": 1}, {"3.seed": 2, "6.text": "x"}]
    path.write_text(json.dumps([{"3.seed": 1}, 5]))
    with pytest.raises(WorkflowFormatError, match="row 2 of sweep.json is int"):
        load_sweep(path)
    path.write_text("[{")
    with pytest.raises(WorkflowFormatError, match="not valid JSON"):
        load_sweep(path)


def test_a_column_or_key_that_names_no_input_is_refused(tmp_path):
    path = tmp_path / "sweep.csv"
    path.write_text("seed\n1\n")
    with pytest.raises(WorkflowFormatError, match="NODE_ID.INPUT"):
        load_sweep(path)
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps([{"seed": 1}]))
    with pytest.raises(WorkflowFormatError, match="row 1 of sweep.json: key"):
        load_sweep(path)


def test_yaml_product_of_a_range_and_a_list_with_zipped_prompts(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "set: {3.steps: 2}\n"
        "product:\n"
        "  3.seed: {range: [0, 1000]}\n"
        "  4.ckpt_name: [a.safetensors, b.safetensors]\n"
        "zip:\n"
        "  6.text: [a red fox, a blue bird]\n"
        "  9.filename_prefix: [fox, bird]\n")
    rows = load_sweep(path)
    assert len(rows) == 1000 * 2 * 2
    assert rows[0].overrides == {"3.steps": 2, "3.seed": 0, "4.ckpt_name": "a.safetensors",
                                 "6.text": "a red fox", "9.filename_prefix": "fox"}
    assert rows[1].overrides["6.text"] == "a blue bird" and rows[1].overrides["9.filename_prefix"] == "bird"
    assert rows[2].overrides["4.ckpt_name"] == "b.safetensors"
    assert rows[-1].overrides["3.seed"] == 999 and rows[-1].number == 4000
    assert len({job_key({}, r.overrides) for r in rows}) == 4000


def test_several_zip_groups_for_prompts_and_sizes():
    rows = expand({"zip": [{"6.text": ["a", "b"]}, {"5.width": [512, 768], "5.height": [512, 512]}],
                   "product": {"3.seed": {"range": [10, 16, 3]}}})
    assert [r.overrides for r in rows][:3] == [
        {"3.seed": 10, "6.text": "a", "5.width": 512, "5.height": 512},
        {"3.seed": 10, "6.text": "a", "5.width": 768, "5.height": 512},
        {"3.seed": 10, "6.text": "b", "5.width": 512, "5.height": 512},
    ]
    assert len(rows) == 2 * 2 * 2


@pytest.mark.parametrize("spec, expected", [
    ({"zip": {"6.text": ["a", "b"], "3.seed": [1]}}, "as long as each other: 6.text has 2, 3.seed has 1"),
    ({"product": {"3.seed": {"range": [0]}}}, r"range wants \[start, stop\]"),
    ({"product": {"3.seed": {"from": 0}}}, "the only one a sweep knows"),
    ({"prodcut": {}}, "unknown key"),
    ({"product": {"3.seed": {"range": [0, 10 ** 7]}}}, "at most 1000000"),
])
def test_bad_descriptions_say_what_is_wrong(spec, expected):
    with pytest.raises(WorkflowFormatError, match=expected):
        expand(spec)


def test_the_job_key_is_the_content_not_the_position():
    assert job_key({"a": 1}, {"3.seed": 1, "6.text": "x"}) == job_key({"a": 1}, {"6.text": "x", "3.seed": 1})
    assert job_key({"a": 1}, {"3.seed": 1}) != job_key({"a": 2}, {"3.seed": 1})
    assert job_key({"a": 1}, {"3.seed": 1}) != job_key({"a": 1}, {"3.seed": 2})
