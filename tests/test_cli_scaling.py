"""farm serve/start: the autoscale knobs, the model source and the compile switch become the
FarmConfig of the farm they start; a bad value is one line and exit 2, before Ray is touched."""
from pathlib import Path

import pytest

from farm.cli import _farm_config, _paths, build_parser, main
from farm.scheduler.autoscale import ScaleKnobs


@pytest.mark.parametrize("command", ["start", "serve"])
def test_the_flags_make_the_farms_config(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args([command, "--max-gpus", "4", "--target-backlog-s", "30",
                                      "--scale-down-delay-s", "120", "--model-source", "share/models"])
    config = _farm_config(args, _paths(args), tmp_path / "q.sqlite")
    assert config.max_workers == 4
    assert config.autoscale == ScaleKnobs(max_gpus=4, target_backlog_s=30.0, scale_down_delay_s=120.0)
    assert config.paths.model_source == str(tmp_path / "share" / "models")  # absolute: actors run elsewhere
    uri = build_parser().parse_args([command, "--model-source", "s3://bucket/models", "--max-gpus", "2"])
    config = _farm_config(uri, _paths(uri), tmp_path / "q.sqlite")
    assert config.paths.model_source == "s3://bucket/models"
    assert config.max_workers == 2 and config.autoscale is None  # a cap alone: no autoscaling
    on = build_parser().parse_args([command, "--autoscale"])
    assert _farm_config(on, _paths(on), Path("q")).autoscale == ScaleKnobs()
    assert config.compile.enabled is None  # compiled on a GPU, eager on the CPU
    eager = build_parser().parse_args([command, "--no-compile"])
    assert _farm_config(eager, _paths(eager), Path("q")).compile.enabled is False
    warm = build_parser().parse_args([command, "--warm", "sd15:16:512x512", "--warm", "sdxl:4:1216x832"])
    assert _farm_config(warm, _paths(warm), Path("q")).compile.warm_shapes == (("sd15", 16, 64, 64),
                                                                              ("sdxl", 4, 104, 152))


@pytest.mark.parametrize("argv, expected", [
    (["start", "--min-gpus", "5", "--max-gpus", "2"], "min_gpus is 5; it must be between 0 and max_gpus (2)"),
    (["serve", "--target-backlog-s", "0"], "target_backlog_s is 0.0; it must be more than 0"),
    (["start", "--max-gpus", "0"], "--max-gpus is 0; it must be at least 1"),
    (["start", "--warm", "sd15:16"], "--warm 'sd15:16' is not ARCH:JOBS:WIDTHxHEIGHT, e.g. sd15:16:512x512"),
    (["serve", "--warm", "sd15:8:500x512"], "width and height are pixels, positive multiples of 8"),
    (["start", "--warm", "sd3:8:512x512"], "is not (architecture, jobs, latent height, latent width)"),
])
def test_a_bad_knob_is_one_line_and_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
