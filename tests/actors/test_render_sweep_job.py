"""jobs.render_sweep.run on the session's farm: a manifest in the sweep's order."""
from jobs.render_sweep import SweepRow, run


def test_a_sweep_renders_every_row_in_order(ray_farm, txt2img):
    rows = [SweepRow({"3.seed": 700 + i, "9.filename_prefix": f"sweep/{i}"}) for i in range(3)]
    manifest = run(ray_farm, txt2img, rows, progress=False)
    assert [m["status"] for m in manifest] == ["success"] * 3
    assert [m["overrides"]["3.seed"] for m in manifest] == [700, 701, 702]
    assert [m["files"][0].rsplit("/", 1)[1].split("_")[0] for m in manifest] == ["0", "1", "2"]
