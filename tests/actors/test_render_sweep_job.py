"""jobs.render_sweep.run on the session's farm: images and manifest.jsonl at an fsspec
destination, a re-run skips what is done, a bad row is named and nothing is queued."""
import io
import json
import uuid

import pytest

from jobs.destination import Destination
from jobs.render_sweep import ProgressLine, SweepRowError, run, summary
from jobs.sweep import SweepRow


def rows(seeds):
    return [SweepRow({"3.seed": s, "9.filename_prefix": f"sweep/{i}"}, i + 1) for i, s in enumerate(seeds)]


def test_a_sweep_renders_to_the_destination_and_a_rerun_skips_it(ray_farm, txt2img):
    dest = Destination(f"memory://sweep-{uuid.uuid4().hex}")
    report = run(ray_farm, txt2img, rows([700, 701, 702]), dest, progress="none")
    assert (report.rendered, report.skipped, report.failed) == (3, 0, [])
    lines = [json.loads(line) for line in dest.fs.cat(dest.manifest_url).decode().splitlines()]
    assert [e["overrides"]["3.seed"] for e in lines] == [700, 701, 702]
    for entry in lines:
        assert entry["status"] == "success" and entry["error"] is None
        assert entry["worker"].startswith("worker-") and entry["node"]
        assert entry["submitted_at"] <= entry["started_at"] <= entry["finished_at"]
        (output,) = entry["outputs"]
        assert output.endswith(f"{entry['key']}_00.png") and dest.fs.cat(output)[:8] == b"\x89PNG\r\n\x1a\n"
    again = run(ray_farm, txt2img, rows([700, 701, 702, 703]), dest, progress="none")
    assert (again.rendered, again.skipped) == (1, 3)
    assert [e["overrides"]["3.seed"] for e in again.entries] == [700, 701, 702, 703]
    assert [e["prompt_id"] for e in again.entries[:3]] == [e["prompt_id"] for e in lines]  # not rendered again


def test_a_bad_row_is_named_and_nothing_is_queued(ray_farm, txt2img):
    dest = Destination(f"memory://sweep-{uuid.uuid4().hex}")
    before = len(ray_farm.history())
    bad = rows([1, 2]) + [SweepRow({"3.steps": -4}, 3, "row 3 (line 4 of sweep.csv)")]
    with pytest.raises(SweepRowError, match=r"1 of 3 row\(s\)[^\n]*\n  row 3 \(line 4 of sweep.csv\): Prompt "
                       r"outputs failed validation\n      node 3 \(KSampler\): [^\n]*steps"):
        run(ray_farm, txt2img, bad, dest, progress="none")
    assert len(ray_farm.history()) == before
    assert dest.read_manifest() == []


def test_a_failed_render_is_in_the_manifest_with_its_error(ray_farm, txt2img):
    """A checkpoint that validates (the file is there) but is not safetensors inside."""
    broken_file = ray_farm.paths.models / "checkpoints" / "sweep-broken" / "garbage.safetensors"
    broken_file.parent.mkdir(exist_ok=True)
    broken_file.write_bytes(b"not a safetensors file")
    broken = json.loads(json.dumps(txt2img))
    broken["4"]["inputs"]["ckpt_name"] = "sweep-broken/garbage.safetensors"
    dest = Destination(f"memory://sweep-{uuid.uuid4().hex}")
    try:
        report = run(ray_farm, broken, rows([5]), dest, progress="none")
    finally:
        broken_file.unlink()
        broken_file.parent.rmdir()
    assert report.rendered == 0 and len(report.failed) == 1
    (entry,) = dest.read_manifest()
    assert entry["status"] == "error" and "garbage.safetensors" in entry["error"] and "outputs" not in entry
    assert "row 1" in summary(report, dest) and entry["error"] in summary(report, dest)


def test_progress_lines_say_done_total_rate_and_eta():
    out = io.StringIO()
    line = ProgressLine(total=10, skipped=2, every_s=0.0, out=out)
    line.update(done=6, failed=1, images=4)
    text = out.getvalue()
    assert text.startswith("render_sweep: 6/10 done (1 failed, 2 skipped), ")
    assert "images/s, ETA " in text
