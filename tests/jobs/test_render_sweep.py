"""Reading a sweep: JSON lists and CSV columns named NODE_ID.INPUT, values typed as JSON."""
import json

import pytest

from farm.errors import WorkflowFormatError
from jobs.render_sweep import load_sweep


def test_csv_cells_are_json_when_they_parse_and_text_otherwise(tmp_path):
    path = tmp_path / "sweep.csv"
    path.write_text("3.seed,3.cfg,6.text,5.width\n1,7.5,a red fox,\n2,6,\"a fox, at night\",128\n")
    rows = load_sweep(path)
    assert [r.overrides for r in rows] == [
        {"3.seed": 1, "3.cfg": 7.5, "6.text": "a red fox"},  # an empty cell keeps the workflow's value
        {"3.seed": 2, "3.cfg": 6, "6.text": "a fox, at night", "5.width": 128},
    ]


def test_json_sweep_is_a_list_of_objects(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps([{"3.seed": 1}, {"3.seed": 2, "6.text": "x"}]))
    assert [r.overrides for r in load_sweep(path)] == [{"3.seed": 1}, {"3.seed": 2, "6.text": "x"}]
    path.write_text(json.dumps({"3.seed": 1}))
    with pytest.raises(WorkflowFormatError, match="list of objects"):
        load_sweep(path)


def test_a_csv_column_that_names_no_input_is_refused(tmp_path):
    path = tmp_path / "sweep.csv"
    path.write_text("seed\n1\n")
    with pytest.raises(WorkflowFormatError, match="NODE_ID.INPUT"):
        load_sweep(path)
