"""Render a sweep of one workflow through the farm: a `ray job submit` entry point.

    ray job submit --address http://head:8265 --working-dir . -- \\
        python -m jobs.render_sweep workflow.json sweep.csv --manifest renders.json

The sweep is a JSON list of override objects ([{"3.seed": 1, "6.text": "a fox"}, ...]) or
a CSV whose header names inputs as NODE_ID.INPUT, one row per render; a CSV cell is read
as JSON when it parses (42, 7.5, true) and as text otherwise. Every row is validated
before anything is queued. The manifest lists each render's overrides, prompt_id, status
and files, in the sweep's order.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from farm.errors import FarmError, WorkflowFormatError
from farm.workflow.prepare import load_json_file


@dataclass(frozen=True)
class SweepRow:
    overrides: dict[str, object]  # "NODE_ID.INPUT" -> value


def _cell(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_sweep(path: Path) -> list[SweepRow]:
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            bad = [c for c in reader.fieldnames or [] if "." not in c]
            if bad:
                raise WorkflowFormatError(f"{path.name}: column(s) {', '.join(bad)} must be named NODE_ID.INPUT, "
                                          "e.g. 3.seed")
            return [SweepRow({k: _cell(v) for k, v in row.items() if v != ""}) for row in reader]
    data = load_json_file(path)
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise WorkflowFormatError(f"{path.name}: a JSON sweep is a list of objects such as "
                                  '[{"3.seed": 1}, {"3.seed": 2}]')
    return [SweepRow(dict(row)) for row in data]


def run(farm, workflow: object, rows: list[SweepRow], progress: bool = True) -> list[dict]:
    """Submit every row (all validated first), wait for all, return the manifest."""
    results = farm.map(workflow, [r.overrides for r in rows], progress=progress, raise_on_error=False)
    return [{"overrides": row.overrides, "prompt_id": r.prompt_id, "status": r.status.value,
             "error": r.error, "worker_id": r.worker_id, "files": [str(p) for p in r.files]}
            for row, r in zip(rows, results)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.render_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", type=Path, help="API- or UI-format workflow JSON")
    parser.add_argument("sweep", type=Path, help="overrides: a .json list of objects or a .csv of NODE.INPUT columns")
    parser.add_argument("--address", default="auto", help="the Ray cluster (default: the job's own)")
    parser.add_argument("--models", type=Path, help="models folder to validate against (default: the farm's)")
    parser.add_argument("--manifest", type=Path, help="write the results here as JSON (default: stdout)")
    args = parser.parse_args(argv)

    from farm.client import Farm

    try:
        rows = load_sweep(args.sweep)
        workflow = load_json_file(args.workflow)
        farm = Farm.connect(args.address, models=args.models)
        started = time.perf_counter()
        manifest = run(farm, workflow, rows, progress=sys.stderr.isatty())
    except FarmError as exc:
        print(f"render_sweep: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    failed = sum(1 for m in manifest if m["status"] != "success")
    text = json.dumps(manifest, indent=2)
    if args.manifest:
        args.manifest.write_text(text)
    else:
        print(text)
    print(f"rendered {len(manifest) - failed} of {len(manifest)} in {elapsed:.1f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
