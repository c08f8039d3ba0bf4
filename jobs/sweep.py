"""A sweep: the overrides of every render of one workflow, read from a file.

- CSV: a header of NODE_ID.INPUT names, one row per render; a cell is read as JSON when it
  parses (42, 7.5, true) and as text otherwise; an empty cell keeps the workflow's value.
- JSON list: one object of overrides per render, [{"3.seed": 1}, {"3.seed": 2}].
- YAML or JSON object: a description that expands to many renders:

      set:      {3.steps: 20}                 # the same in every render
      product:                                # every combination of these
        3.seed: {range: [0, 1000]}            # 0..999; [start, stop, step] also works
        4.ckpt_name: [a.safetensors, b.safetensors]
      zip:                                    # advance together: one axis of the product
        6.text: [a red fox, a blue bird]
        9.filename_prefix: [fox, bird]

  `zip` may also be a list of such groups (e.g. one for prompts, one for width/height).
  The product's first key varies slowest, the last zip group fastest.

Each row keeps where it came from ("row 7 (line 8 of sweep.csv)") so that an error names it.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from farm.errors import WorkflowFormatError

MAX_ROWS = 1_000_000  # a typo in a range should not build a billion-row list


@dataclass(frozen=True)
class SweepRow:
    overrides: dict[str, object]  # "NODE_ID.INPUT" -> value
    number: int = 1  # 1-based, in the sweep's order
    where: str = field(default="", compare=False)  # how an error names it

    @property
    def label(self) -> str:
        return self.where or f"row {self.number}"


def job_key(workflow: object, overrides: dict) -> str:
    """The content key of one render: the same workflow with the same overrides is the same
    image, whatever the row's position, so a re-run finds it done."""
    text = json.dumps([workflow, overrides], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _cell(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _check_names(names, source: str) -> None:
    bad = [str(n) for n in names if not isinstance(n, str) or "." not in n]
    if bad:
        raise WorkflowFormatError(f"{source}: {', '.join(bad)} must be named NODE_ID.INPUT, e.g. 3.seed")


def load_sweep(path: Path) -> list[SweepRow]:
    path = Path(path)
    if not path.is_file():
        raise WorkflowFormatError(f"sweep file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path)
    text = path.read_text(encoding="utf-8")
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise WorkflowFormatError(f"{path.name} is not valid {'YAML' if suffix in ('.yaml', '.yml') else 'JSON'}: "
                                  f"{' '.join(str(exc).split())}") from None
    if isinstance(data, list):
        return _load_list(data, path.name)
    if isinstance(data, dict):
        return expand(data, path.name)
    raise WorkflowFormatError(f"{path.name}: a sweep is a list of override objects such as "
                              '[{"3.seed": 1}, {"3.seed": 2}], or an object with set/product/zip')


def _load_csv(path: Path) -> list[SweepRow]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _check_names(reader.fieldnames or [], f"{path.name}: column(s)")
        rows = []
        for number, row in enumerate(reader, start=1):
            if None in row:  # more cells than the header has names
                raise WorkflowFormatError(f"row {number} (line {reader.line_num} of {path.name}) has "
                                          f"{len(reader.fieldnames) + len(row[None])} cells; the header names "
                                          f"{len(reader.fieldnames)}")
            overrides = {k: _cell(v) for k, v in row.items() if v not in ("", None)}
            rows.append(SweepRow(overrides, number, f"row {number} (line {reader.line_num} of {path.name})"))
    return rows


def _load_list(data: list, source: str) -> list[SweepRow]:
    rows = []
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise WorkflowFormatError(f"row {number} of {source} is {type(item).__name__}, not an object of "
                                      'overrides such as {"3.seed": 1}')
        _check_names(item, f"row {number} of {source}: key(s)")
        rows.append(SweepRow(dict(item), number, f"row {number} of {source}"))
    return rows


def _values(name: str, spec: object, source: str) -> list:
    """A product or zip entry: a list, {"range": [start, stop(, step)]}, or one value."""
    if isinstance(spec, dict):
        if set(spec) != {"range"}:
            raise WorkflowFormatError(f"{source}: {name} is an object; the only one a sweep knows is "
                                      '{"range": [start, stop]} (or [start, stop, step])')
        bounds = spec["range"]
        if (not isinstance(bounds, list) or len(bounds) not in (2, 3)
                or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)):
            raise WorkflowFormatError(f"{source}: {name}: range wants [start, stop] or [start, stop, step] "
                                      f"of integers, not {bounds!r}")
        if len(bounds) == 3 and bounds[2] == 0:
            raise WorkflowFormatError(f"{source}: {name}: a range's step cannot be 0")
        values = range(*bounds)
        if len(values) > MAX_ROWS:
            raise WorkflowFormatError(f"{source}: {name}: range {bounds} has {len(values)} values; "
                                      f"at most {MAX_ROWS} renders per sweep")
        return list(values)
    if isinstance(spec, list):
        return spec
    return [spec]


def expand(data: dict, source: str = "sweep") -> list[SweepRow]:
    """Rows of a set/product/zip description (see the module's docstring)."""
    unknown = set(data) - {"set", "product", "zip"}
    if unknown:
        raise WorkflowFormatError(f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; a sweep "
                                  "object has set (every render), product (every combination), zip (lists "
                                  "that advance together)")
    fixed = data.get("set") or {}
    product = data.get("product") or {}
    groups = data.get("zip") or []
    groups = [groups] if isinstance(groups, dict) else groups
    for part, value in (("set", fixed), ("product", product)):
        if not isinstance(value, dict):
            raise WorkflowFormatError(f"{source}: {part} must map NODE_ID.INPUT names to values")
        _check_names(value, f"{source}: {part} key(s)")
    # every axis: a list of {name: value} dicts, one per step along it
    axes: list[list[dict]] = [[{name: v} for v in _values(name, spec, f"{source}: product")]
                              for name, spec in product.items()]
    for index, group in enumerate(groups, start=1):
        if not isinstance(group, dict) or not group:
            raise WorkflowFormatError(f"{source}: zip group {index} must map NODE_ID.INPUT names to lists")
        _check_names(group, f"{source}: zip key(s)")
        columns = {name: _values(name, spec, f"{source}: zip") for name, spec in group.items()}
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise WorkflowFormatError(f"{source}: zip lists advance together and must be as long as each "
                                      f"other: {', '.join(f'{n} has {k}' for n, k in lengths.items())}")
        axes.append([dict(zip(columns, values)) for values in zip(*columns.values())])
    total = 1
    for axis in axes:
        total *= len(axis)
    if total > MAX_ROWS:
        raise WorkflowFormatError(f"{source} expands to {total} renders; at most {MAX_ROWS} per sweep "
                                  "(split it into several sweeps)")
    rows = []
    for number, combo in enumerate(itertools.product(*axes), start=1):
        overrides = dict(fixed)
        for part in combo:
            overrides.update(part)
        rows.append(SweepRow(overrides, number, f"row {number} of {source} (expanded)"))
    return rows
