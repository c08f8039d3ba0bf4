"""Hypothesis strategies for API-format workflows: random graphs built from the node
registry's own specs (so most of them get past the shape checks and into validation),
with every input sometimes right, sometimes of a wrong type, missing, linked to a wrong
output, a missing node or itself (cycles), a huge, NaN or Infinity number, a deep nest, a
long or unicode string, or a filename prefix that tries to leave the output folder."""
from __future__ import annotations

import math

from hypothesis import strategies as st

from farm.nodes.registry import default_registry

REGISTRY = default_registry()
CLASS_TYPES = sorted(REGISTRY)

NASTY_TEXT = st.sampled_from([
    "", " ", "\x00", "..", "../../etc/passwd", "/abs/olute", "C:\\windows", "a/../../b", "%00", "\u202e",
    "snowman \u2603", "\U0001f600" * 40, "x" * 5000, "tiny-sd15.safetensors", "tiny-sdxl.safetensors",
    "missing.safetensors", "euler", "normal", "ComfyUI", "\ud800", "NaN", "Infinity", "1e309", "-0",
])
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64, 2**64 - 1, -(2**63), 10**30, 16385, 4097]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.5]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=30), NASTY_TEXT)


def deep(value, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


JUNK = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
NESTED = st.builds(deep, SCALARS, st.sampled_from([3, 10, 70, 500]))


@st.composite
def input_value(draw, spec_input, node_ids: list[str]):
    """One input's value: mostly plausible for its type, often not."""
    kind = spec_input.type
    choice = draw(st.integers(0, 9))
    if choice <= 3:  # a link, to a node that may or may not exist, at any output index
        target = draw(st.one_of(st.sampled_from(node_ids), st.text(max_size=4), st.integers(-3, 100)))
        index = draw(st.one_of(st.integers(0, 3), st.integers(-(2**40), 2**40), st.booleans()))
        return [target, index]
    if choice == 4:  # a list that is no link
        return draw(st.lists(SCALARS, max_size=4))
    if choice == 5:
        return draw(st.one_of(JUNK, NESTED, st.fixed_dictionaries({"__value__": JUNK})))
    # a constant of roughly the right type
    if kind == "INT":
        return draw(st.one_of(NUMBERS, st.text("0123456789-e.", max_size=25)))
    if kind == "FLOAT":
        return draw(st.one_of(NUMBERS, st.sampled_from(["nan", "inf", "-inf", "1.5", "x"])))
    if kind == "BOOLEAN":
        return draw(st.one_of(st.booleans(), SCALARS))
    if kind == "COMBO":
        from farm.nodes.spec import NodeContext  # noqa: F401  (choices may be computed; fixed ones drawn here)

        fixed = spec_input.choices if isinstance(spec_input.choices, tuple) else ()
        return draw(st.one_of(st.sampled_from(fixed) if fixed else NASTY_TEXT, NASTY_TEXT, SCALARS))
    if kind == "STRING":
        return draw(st.one_of(st.text(max_size=200), NASTY_TEXT, SCALARS))
    return draw(SCALARS)  # a MODEL, LATENT, ... as a constant


@st.composite
def workflows(draw, max_nodes: int = 7) -> dict:
    """A whole API-format prompt; sometimes not even the right shape."""
    n = draw(st.integers(1, max_nodes))
    node_ids = draw(st.lists(st.one_of(st.integers(1, 20).map(str), st.text(min_size=1, max_size=6)),
                             min_size=n, max_size=n, unique=True))
    prompt: dict = {}
    for node_id in node_ids:
        shape = draw(st.integers(0, 19))
        if shape == 0:  # not a node object at all
            prompt[node_id] = draw(SCALARS | st.lists(SCALARS, max_size=2))
            continue
        if shape == 1:  # a class that does not exist, or no class_type, or a non-string one
            prompt[node_id] = {"class_type": draw(st.one_of(st.none(), st.text(max_size=10), st.integers())),
                               "inputs": {}}
            continue
        class_type = draw(st.sampled_from(CLASS_TYPES))
        spec = REGISTRY.spec(class_type)
        inputs: dict = {}
        for inp in spec.inputs:
            if draw(st.integers(0, 9)) == 0:
                continue  # missing (a missing link when it is a link input)
            inputs[inp.name] = draw(input_value(inp, node_ids))
        if draw(st.integers(0, 9)) == 0:
            inputs[draw(st.text(max_size=10))] = draw(SCALARS)  # an input the node does not declare
        node: dict = {"class_type": class_type, "inputs": inputs}
        if shape == 2:
            node["inputs"] = draw(SCALARS)  # inputs that are not an object
        if shape == 3:
            node["_meta"] = draw(st.one_of(JUNK, st.fixed_dictionaries({"title": SCALARS})))
        prompt[node_id] = node
    return prompt


def filename_prefixes() -> st.SearchStrategy:
    return st.one_of(NASTY_TEXT, st.text(max_size=40), st.sampled_from(
        ["ComfyUI", "sub/dir/img", "../escape", "/etc/x", "a\x00b", "~/x", "./", "", "con", "a" * 300]))


@st.composite
def overrides(draw, prompt: dict) -> dict:
    keys = [f"{n}.{i}" for n, node in prompt.items() if isinstance(node, dict) and isinstance(node.get("inputs"), dict)
            for i in node["inputs"]]
    keys += ["9.filename_prefix", "3.seed", "nope.x", "no_dot", ".", "3."]
    chosen = draw(st.lists(st.sampled_from(keys), max_size=3, unique=True))
    return {key: draw(st.one_of(SCALARS, filename_prefixes())) for key in chosen}


@st.composite
def mutated(draw, base: dict) -> dict:
    """A valid prompt with a few of its inputs replaced, removed or relinked: most such
    prompts pass the shape checks and reach validation's deeper paths (and planning)."""
    import copy

    prompt = copy.deepcopy(base)
    node_ids = list(prompt)
    for _ in range(draw(st.integers(1, 4))):
        node_id = draw(st.sampled_from(node_ids))
        node = prompt[node_id]
        spec = REGISTRY.spec(node["class_type"])
        inp = draw(st.sampled_from(spec.inputs))
        action = draw(st.integers(0, 3))
        if action == 0:
            node["inputs"].pop(inp.name, None)
        elif action == 1 and inp.name == "filename_prefix":
            node["inputs"][inp.name] = draw(filename_prefixes())
        else:
            node["inputs"][inp.name] = draw(input_value(inp, node_ids))
    return prompt
