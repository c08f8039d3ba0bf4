"""The bench's stop: SIGTERM raises BenchStopped wherever the main thread is, and it must
reach the bench's own handler through the library's broad error handlers."""
from __future__ import annotations

import importlib

import pytest

from farm.models.store import ModelFolders
from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from farm.settings import Limits
from farm.workflow.prepare import prepare
from jobs.bench_report import BenchStopped


def test_a_stop_during_validation_is_not_turned_into_a_validation_error(txt2img, tiny_models, tmp_path, monkeypatch):
    # CI saw it: SIGTERM arrived while the farm mode prepared its jobs, validation's
    # `except Exception` made it "Exception when validating inner node: signal 15", and the
    # bench exited 2 with nothing saved instead of writing what it had measured
    def stopped(*_args, **_kwargs):
        raise BenchStopped("signal 15")

    # the module (farm.workflow exports a function of the same name)
    validate = importlib.import_module("farm.workflow.validate")
    monkeypatch.setattr(validate, "coerce_constant", stopped)
    ctx = NodeContext(ModelFolders(tiny_models), tmp_path / "input", tmp_path / "output", tmp_path / "temp", Limits())
    with pytest.raises(BenchStopped, match="signal 15"):
        prepare(txt2img, default_registry(), ctx)
