"""Generated workflows against the validator (farm.workflow: parse, validate, plan through
prepare): whatever comes in, it either prepares or raises a FarmError subclass, and a
refusal is a ComfyUI body that JSON can carry (the HTTP server sends it as is)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from workflow_strategies import REGISTRY, mutated, overrides, workflows

from farm.errors import FarmError
from farm.nodes.spec import NodeContext
from farm.settings import Limits
from farm.workflow.prepare import PreparedPrompt, ValidationFailed, prepare
from farm.workflow.ui_format import ui_to_api


@pytest.fixture(scope="module")
def ctx(tiny_models, tmp_path_factory) -> NodeContext:
    root = tmp_path_factory.mktemp("fuzz")
    for name in ("input", "output", "temp"):
        (root / name).mkdir()
    from farm.models.store import ModelFolders

    return NodeContext(ModelFolders(tiny_models), root / "input", root / "output", root / "temp",
                       Limits(max_prompt_chars=2000, max_prompt_bytes=20_000, max_json_depth=32))


def check(obj, ctx, extra=None, targets=None) -> PreparedPrompt | None:
    """prepare() and the property: a prompt, or a FarmError; a refusal's body is JSON."""
    try:
        return prepare(obj, REGISTRY, ctx, extra, partial_execution_targets=targets)
    except ValidationFailed as exc:
        body = exc.result.to_comfy()
        json.dumps(body, allow_nan=False)  # what POST /prompt answers, verbatim
        assert set(body) == {"error", "node_errors"} and {"type", "message", "details"} <= set(body["error"])
        assert str(exc)  # the CLI prints it
        return None
    except FarmError as exc:
        assert str(exc)
        return None


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_graphs_from_the_registry_raise_only_farm_errors(ctx, data):
    prompt = data.draw(workflows())
    targets = data.draw(st.none() | st.lists(st.sampled_from(list(prompt) + ["999"]), max_size=2))
    check(prompt, ctx, data.draw(overrides(prompt)), targets)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mutations_of_a_valid_prompt_raise_only_farm_errors(ctx, txt2img, data):
    prepared = check(data.draw(mutated(txt2img)), ctx)
    if prepared is not None:  # what passed is a plan the engine can take
        assert prepared.plan.outputs
        json.dumps(prepared.prompt, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(obj=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                     max_size=4), max_leaves=20))
def test_arbitrary_json_raises_only_farm_errors(ctx, obj):
    check(obj, ctx)


UI_NODE = st.fixed_dictionaries({
    "id": st.integers(-2, 8) | st.text(max_size=3) | st.none(),
    "type": st.sampled_from(sorted(REGISTRY)) | st.text(max_size=8) | st.none(),
    "mode": st.sampled_from([0, 2, 4]) | st.integers() | st.none(),
    "inputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=8), "link": st.integers(-1, 9) | st.none()}),
                       max_size=3) | st.none(),
    "widgets_values": st.lists(st.none() | st.integers() | st.floats() | st.text(max_size=8), max_size=8)
                      | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2) | st.none(),
})
UI_LINK = st.lists(st.integers(-1, 9) | st.text(max_size=2) | st.none(), max_size=7)


@settings(max_examples=80, deadline=None)
@given(nodes=st.lists(UI_NODE, max_size=6), links=st.lists(UI_LINK, max_size=6))
def test_saved_ui_graphs_raise_only_farm_errors(ctx, nodes, links):
    graph = {"nodes": nodes, "links": links, "version": 0.4}
    try:
        ui_to_api(graph, REGISTRY)
    except FarmError:
        pass
    check(graph, ctx)
