"""`farm start/stop/serve --address` against a cluster that already runs a farm (the test
session's): they join it instead of starting a second one."""
from farm.cli import main


def test_start_joins_the_farm_already_on_the_cluster(ray_farm, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # set, as in a job: must not crash anything
    assert main(["start", "--models", str(ray_farm.paths.models)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("a farm already runs on the Ray cluster at auto: 2 worker(s)")
    assert str(ray_farm.paths.output) in out
