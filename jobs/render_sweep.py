"""Render a sweep of one workflow through the farm: the `ray job submit` entry point.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m jobs.render_sweep workflow.json sweep.csv --output-dir /data/renders

The sweep (jobs/sweep.py) is a CSV of NODE_ID.INPUT columns, a JSON list of override
objects, or a YAML/JSON object with set/product/zip that expands to thousands of renders.
Every row is validated before anything is queued; a bad one is named by its row number.
Jobs go through the farm (Farm.connect + submit_many), so its placement still picks the GPU
that holds each checkpoint. Images and manifest.jsonl (one line per render: key,
overrides, outputs, worker and node, timings, status, error) go to --output-dir, a folder
on the head or an fsspec URI. Running the same command again skips every render the
manifest lists as done (by a content key of workflow + overrides) and renders the rest.
Progress: a bar on a terminal, else a plain line every --progress-every seconds (what
`ray job logs` shows). Exit status 0: all rendered; 1: some failed (after a summary);
2: bad input, nothing queued.
"""
from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from farm.errors import FarmError, WorkflowFormatError
from farm.workflow.prepare import load_json_file
from jobs.destination import Destination
from jobs.sweep import SweepRow, job_key, load_sweep

__all__ = ["SweepRow", "SweepReport", "run", "main"]

SUBMIT_CHUNK = 256  # jobs per submit call: bounded messages, the farm starts on the first chunk early
MANIFEST_EVERY_S = 5.0  # rewrite the manifest at most this often while rendering
MAX_ROW_ERRORS = 10  # listed in a refusal; the count says how many more


class SweepRowError(WorkflowFormatError):
    """One or more rows of the sweep do not validate; nothing was queued."""


class SweepInterrupted(Exception):
    """The driver was told to stop (SIGINT, SIGTERM: `ray job stop`); the sweep's jobs still
    queued in the farm were cancelled, and a re-run resumes."""

    def __init__(self, signame: str, cancelled: int = 0, unfinished: int = 0):
        super().__init__(signame)
        self.signame, self.cancelled, self.unfinished = signame, cancelled, unfinished

    def __str__(self) -> str:
        return (f"render_sweep: {self.signame}: cancelled {self.cancelled} job(s) still queued in the farm; "
                f"{self.unfinished - self.cancelled} already running finish there but are not recorded. "
                "Run the same command again to resume: done renders are skipped.")


class _Interrupt(Exception):
    """Raised in the main thread by the SIGTERM handler."""


@dataclass
class SweepReport:
    entries: list[dict]  # the manifest, in the sweep's order (then older entries not in this sweep)
    rendered: int = 0
    skipped: int = 0  # done by an earlier run
    failed: list[dict] = field(default_factory=list)
    images: int = 0
    elapsed_s: float = 0.0


class ProgressLine:
    """Plain lines for logs (no terminal): done/total, images/s, ETA; at most one per
    `every_s`, plus the last."""

    def __init__(self, total: int, skipped: int, every_s: float, out=None):
        self.total, self.skipped, self.every_s = total, skipped, every_s
        self.out = out or sys.stderr
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, done: int, failed: int, images: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        todo = self.total - self.skipped
        rate = (done - self.skipped) / elapsed
        eta = f"{_duration((todo - (done - self.skipped)) / rate)}" if rate > 0 else "?"
        print(f"render_sweep: {done}/{self.total} done ({failed} failed, {self.skipped} skipped), "
              f"{images / elapsed:.2f} images/s, ETA {eta}", file=self.out, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


def validate(farm, workflow: object, rows: list[SweepRow]) -> None:
    """Every row, before anything is queued; the refusal names each bad row."""
    bad = []
    for row in rows:
        try:
            farm.prepare(workflow, row.overrides)
        except FarmError as exc:
            bad.append(f"{row.label}: " + str(exc).replace("\n", "\n    "))
    if bad:
        more = f"\n  ... and {len(bad) - MAX_ROW_ERRORS} more bad row(s)" if len(bad) > MAX_ROW_ERRORS else ""
        raise SweepRowError(f"{len(bad)} of {len(rows)} row(s) of the sweep do not validate; nothing was queued:\n  "
                            + "\n  ".join(bad[:MAX_ROW_ERRORS]) + more)


def run(farm, workflow: object, rows: list[SweepRow], destination: Destination, *,
        progress: str = "lines", progress_every_s: float = 10.0) -> SweepReport:
    """Render the rows not yet done at `destination`, copy their images there, keep its
    manifest current. progress: "bar" (tqdm), "lines" (plain, for logs) or "none"."""
    started = time.monotonic()
    previous = {e["key"]: e for e in destination.read_manifest()}
    order: list[str] = []  # keys in the sweep's order
    todo: list[tuple[str, SweepRow]] = []
    entries: dict[str, dict] = {}
    for row in rows:
        key = job_key(workflow, row.overrides)
        if key in entries:
            continue  # the same render twice in one sweep: one image
        order.append(key)
        old = previous.get(key)
        if old is not None and old.get("status") == "success":
            entries[key] = old
        else:
            entries[key] = {"key": key, "row": row.number, "overrides": row.overrides, "status": "pending"}
            todo.append((key, row))
    report = SweepReport(entries=[], skipped=len(order) - len(todo))
    validate(farm, workflow, [row for _, row in todo])

    finished: queue.Queue = queue.Queue()
    bar = lines = None
    if progress == "bar":
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), initial=report.skipped, unit="job", desc="rendering")
    elif progress == "lines":
        lines = ProgressLine(len(order), report.skipped, progress_every_s)
    nodes: dict[str, str] = {}
    last_write = time.monotonic()

    def flush() -> None:
        report.entries = [entries[k] for k in order] + [e for k, e in previous.items() if k not in entries]
        destination.write_manifest(report.entries)

    restore = _raise_on_sigterm()
    try:
        for start in range(0, len(todo), SUBMIT_CHUNK):
            chunk = todo[start:start + SUBMIT_CHUNK]
            ids = [str(uuid.uuid4()) for _ in chunk]
            for (key, _), prompt_id in zip(chunk, ids):  # known before the call: an interrupt cancels them
                entries[key]["prompt_id"] = prompt_id
            futures = farm.submit_many(workflow, [row.overrides for _, row in chunk], prompt_ids=ids)
            for (key, row), future in zip(chunk, futures):
                entries[key]["status"] = "queued"
                future.add_done_callback(lambda f, key=key: finished.put((key, f)))
        flush()  # a crash from here on resumes with what is known
        for _ in range(len(todo)):
            key, future = _next(finished)
            entry = entries[key]
            _record(entry, future, destination, farm, nodes)
            report.images += len(entry.get("outputs", []))
            if entry["status"] == "success":
                report.rendered += 1
            else:
                report.failed.append(entry)
            if bar is not None:
                bar.update(1)
            if lines is not None:
                lines.update(report.skipped + report.rendered + len(report.failed), len(report.failed),
                             report.images)
            if time.monotonic() - last_write > MANIFEST_EVERY_S:
                flush()
                last_write = time.monotonic()
    except (KeyboardInterrupt, _Interrupt) as exc:
        signame = "SIGINT" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        unfinished = [e for e in entries.values() if e["status"] in ("pending", "queued")]
        ids = [e["prompt_id"] for e in unfinished if "prompt_id" in e]
        cancelled = farm.cluster.call("delete_queued", ids, timeout_s=30) if ids else 0
        for entry in unfinished:
            entry.update(status="interrupted", error=f"the sweep was stopped ({signame}) before it finished")
        raise SweepInterrupted(signame, cancelled, len(ids)) from None
    finally:
        restore()
        if bar is not None:
            bar.close()
        flush()
    if lines is not None and todo:
        lines.update(report.skipped + report.rendered + len(report.failed), len(report.failed), report.images,
                     force=True)
    report.elapsed_s = time.monotonic() - started
    return report


def _next(finished: queue.Queue):
    """The next finished job; a timeout now and then so that a signal is seen at once."""
    while True:
        try:
            return finished.get(timeout=0.5)
        except queue.Empty:
            continue


def _raise_on_sigterm():
    """SIGTERM (`ray job stop`, a scheduler's kill) stops the sweep as Ctrl-C does; returns
    the undo. Only the main thread may set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise _Interrupt()

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _record(entry: dict, future, destination: Destination, farm, nodes: dict[str, str]) -> None:
    """One finished job into its manifest entry; its images copied to the destination."""
    try:
        result = future.outcome()
    except Exception as exc:  # the farm went away under it
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        return
    timings = result.timings
    entry.update(status=result.status.value, error=result.error, worker=result.worker_id,
                 node=_node_of(result.worker_id, farm, nodes), attempts=result.attempts,
                 submitted_at=timings.submitted_at_s, started_at=timings.started_at_s,
                 finished_at=timings.finished_at_s, queue_wait_s=timings.queue_wait_s, run_s=timings.run_s,
                 farm_files=[str(p) for p in result.files])
    if not result.ok:
        return
    try:
        entry["outputs"] = [destination.put(path, f"{entry['key']}_{i:02d}{path.suffix}")
                            for i, path in enumerate(result.files)]
    except OSError as exc:
        entry.update(status="failed", error=f"copying the output to {destination.target} failed: {exc} "
                                            "(the job runs on the head, where the farm writes its images)")


def _node_of(worker_id: str | None, farm, nodes: dict[str, str]) -> str | None:
    if worker_id is None:
        return None
    if worker_id not in nodes:  # a worker this run has not seen yet (a new node, a replacement)
        try:
            nodes.update({w.worker_id: w.node for w in farm.status().workers})
        except Exception:
            return None
    return nodes.get(worker_id)


def summary(report: SweepReport, destination: Destination) -> str:
    lines = [f"render_sweep: {len(report.entries)} render(s) in the manifest: {report.rendered} rendered now, "
             f"{report.skipped} done before, {len(report.failed)} failed; {report.images} image(s) in "
             f"{report.elapsed_s:.1f} s; manifest: {destination.manifest_url}"]
    for entry in report.failed[:MAX_ROW_ERRORS]:
        lines.append(f"  failed: row {entry.get('row')} {entry.get('overrides')}: {entry.get('error')}")
    if len(report.failed) > MAX_ROW_ERRORS:
        lines.append(f"  ... and {len(report.failed) - MAX_ROW_ERRORS} more (see the manifest)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.render_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", type=Path, help="API- or UI-format workflow JSON")
    parser.add_argument("sweep", type=Path, help="a .csv of NODE.INPUT columns, a .json list of override objects, "
                        "or a .yaml/.json object with set/product/zip")
    parser.add_argument("--output-dir", required=True, help="where images and manifest.jsonl go: an absolute "
                        "folder on the head or a URI (s3://bucket/renders); a re-run resumes from its manifest")
    parser.add_argument("--address", default="auto", help="the Ray cluster (default: the job's own)")
    parser.add_argument("--models", type=Path, help="models folder to validate against (default: the farm's)")
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="S",
                        help="seconds between progress lines when stderr is not a terminal")
    args = parser.parse_args(argv)

    from farm.client import Farm
    from jobs.head_destination import HeadDestination

    destination = None
    try:
        rows = load_sweep(args.sweep)
        workflow = load_json_file(args.workflow)
        farm = Farm.connect(args.address, models=args.models)
        # on the head, where the farm's images are and a plain path means a folder
        destination = HeadDestination(args.output_dir)
        report = run(farm, workflow, rows, destination, progress="bar" if sys.stderr.isatty() else "lines",
                     progress_every_s=args.progress_every)
    except FarmError as exc:
        print(f"render_sweep: {exc}", file=sys.stderr)
        return 2
    except SweepInterrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    finally:
        if destination is not None:
            destination.close()
    print(summary(report, destination), file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
