"""The durable queue: every job is written to SQLite before the farm acknowledges it.

One table holds queued, running and finished jobs; the state column says which. WAL
journal with synchronous=FULL: a submit that returned survives a crash or power cut.
One connection guarded by a lock, so the dispatcher can be called from any thread.
`JobStore(":memory:")` gives the same store without a file (the simulator uses it).

Restart: `recover()` puts jobs that were running back in the queue (their attempts were
counted when they were claimed) or fails those that used up their attempts.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from farm.errors import ConfigError, DuplicatePromptError, QueueLocked, UnknownJobError
from farm.scheduler.jobs import Job, JobState
from farm.workflow.plan import Plan

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    front INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    worker_id TEXT,
    created_s REAL NOT NULL,
    started_s REAL,
    finished_s REAL,
    error TEXT,
    spec TEXT NOT NULL,
    outputs TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, front DESC, number, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_s, seq) WHERE finished_s IS NOT NULL;
"""

# Job fields that never change after submission travel together as one JSON column.
_SPEC_FIELDS = ("workflow", "outputs_to_execute", "extra_data", "client_id", "checkpoint",
                "checkpoint_bytes", "batch_key", "est_run_s", "est_extra_s", "loras", "arch", "width",
                "height", "images")
_COLUMNS = "seq, job_id, number, front, state, attempts, worker_id, created_s, started_s, " \
           "finished_s, error, spec, outputs"
_PENDING_ORDER = "ORDER BY front DESC, number, seq"
_FINISHED = tuple(s.value for s in JobState if s.finished)


BUSY_TIMEOUT_S = 5.0  # how long opening the file, or a submit, waits for another connection's lock
# How long the farm's own writes (claim, complete, fail, requeue) wait for a lock: such a write
# must not fail, or a job that ran would never end. The dispatcher waits meanwhile.
WRITE_PATIENCE_S = 120.0


def _start_error(path: str, exc: sqlite3.Error, busy_timeout_s: float) -> ConfigError:
    """The one-line reason a queue database cannot be used, and what to do about it."""
    text = " ".join(str(exc).split())  # quick_check's report spans lines
    if "locked" in text or "busy" in text:
        return ConfigError(f"the queue database {path} is locked by another process (still locked after "
                           f"{busy_timeout_s:g} s; another farm on the same --db?): stop that process, or give "
                           "this farm its own --db")
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text
                                                   or "corrupt" in text):
        return ConfigError(f"{path} is not a readable queue database ({text}): move it aside to start with an "
                           "empty queue, or restore it from a backup")
    return ConfigError(f"cannot use the queue database {path} ({text})")


def _spec_json(job: Job) -> str:
    spec = {name: getattr(job, name) for name in _SPEC_FIELDS}
    spec["plan"] = job.plan.to_json() if job.plan is not None else None
    return json.dumps(spec)


def _job_from_row(row: tuple) -> Job:
    (seq, job_id, number, front, state, attempts, worker_id, created_s, started_s,
     finished_s, error, spec, outputs) = row
    fields = json.loads(spec)
    plan = fields.pop("plan", None)
    return Job(job_id=job_id, number=number, front=bool(front), state=JobState(state),
               attempts=attempts, worker_id=worker_id, created_s=created_s, started_s=started_s,
               finished_s=finished_s, error=error, outputs=json.loads(outputs), seq=seq,
               plan=Plan.from_json(plan) if plan is not None else None, **fields)


class JobStore:
    """SQLite-backed job table. Methods that change a job return whether they did, so
    callers can make completion idempotent (a late duplicate is a no-op)."""

    def __init__(self, path: str | Path = ":memory:", busy_timeout_s: float = BUSY_TIMEOUT_S,
                 write_patience_s: float = WRITE_PATIENCE_S):
        self.path = str(path)
        self.busy_timeout_s, self.write_patience_s = busy_timeout_s, write_patience_s
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=busy_timeout_s)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the queue database {self.path} ({exc}): give --db a file in a "
                              "folder this user can write") from None
        try:
            self._open()
        except sqlite3.Error as exc:
            self._db.close()
            raise _start_error(self.path, exc, busy_timeout_s) from None
        except BaseException:
            self._db.close()
            raise
        self._busy(write_patience_s)

    def _busy(self, seconds: float) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def _open(self) -> None:
        """Journal mode, schema and a write probe: a database another process holds locked
        or a file that is no database is found here, at start, not at the first submit."""
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._db.executescript(_SCHEMA)
            found = self._db.execute("SELECT version FROM schema_version").fetchone()
            if found is None:
                self._db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif found[0] != SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path} holds queue schema v{found[0]}; this farm reads v{SCHEMA_VERSION}. "
                    "Use a new queue file or a matching farm version.")
            # an existing schema is read without a write lock: take one once, so a lock held
            # elsewhere shows now (after the busy timeout) rather than as a failed submit later
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("COMMIT")
            # a damaged page: refuse it before a job is lost in it (quick_check reports, it does not raise)
            verdict = self._db.execute("PRAGMA quick_check(1)").fetchone()
            if verdict is not None and verdict[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {verdict[0]}")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction under the lock: all of its writes land, or none. (A single
        statement is atomic by itself and runs without one.)"""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writes -------------------------------------------------------------------------

    def add(self, job: Job) -> Job:
        """Store a new queued job and set its seq; refuses a prompt_id seen before."""
        spec = _spec_json(job)
        try:
            with self._lock:  # one statement: atomic on its own
                self._busy(self.busy_timeout_s)  # a submitter is told soon; its prompt is not queued
                try:
                    cur = self._db.execute(
                        "INSERT INTO jobs (job_id, number, front, state, attempts, created_s, spec, outputs) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, '{}')",
                        (job.job_id, job.number, int(job.front), JobState.QUEUED.value, job.attempts,
                         job.created_s, spec))
                finally:
                    self._busy(self.write_patience_s)
        except sqlite3.IntegrityError:
            raise DuplicatePromptError(
                f"prompt_id {job.job_id} is already queued or in history; "
                "submit with a new prompt_id (or none)") from None
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            raise QueueLocked(f"the queue database {self.path} is locked by another process (for over "
                              f"{self.busy_timeout_s:g} s): prompt {job.job_id} was not queued; send it again") \
                from None
        job.seq, job.state = cur.lastrowid, JobState.QUEUED
        return job

    def claim(self, job_ids: Iterable[str], worker_id: str, now_s: float) -> None:
        """Queued -> running on worker_id, counting one attempt each (one transaction)."""
        rows = [(worker_id, now_s, job_id) for job_id in job_ids]
        with self._tx():
            self._db.executemany(
                "UPDATE jobs SET state='running', attempts=attempts+1, worker_id=?, started_s=? "
                "WHERE job_id=? AND state='queued'", rows)

    def complete(self, job_id: str, outputs: dict[str, Any], now_s: float) -> bool:
        """Running (or queued, if a requeued job's first run reports late) -> done. False
        when the job already finished: a duplicate completion changes nothing."""
        return self._finish(job_id, JobState.DONE, None, now_s, json.dumps(outputs) if outputs else "{}")

    def fail(self, job_id: str, error: str, now_s: float) -> bool:
        return self._finish(job_id, JobState.FAILED, error, now_s, None)

    def cancel(self, job_id: str, reason: str, now_s: float) -> bool:
        return self._finish(job_id, JobState.CANCELLED, reason, now_s, None)

    def _finish(self, job_id: str, state: JobState, error: str | None, now_s: float,
                outputs: str | None) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state=?, error=?, finished_s=?, outputs=COALESCE(?, outputs) "
                "WHERE job_id=? AND state IN ('queued', 'running')",
                (state.value, error, now_s, outputs, job_id))
        return cur.rowcount == 1

    def requeue(self, job_id: str, reason: str, max_attempts: int, now_s: float) -> JobState:
        """Running -> queued again, or -> failed with `reason` once attempts are used up."""
        with self._tx():
            row = self._db.execute("SELECT state, attempts FROM jobs WHERE job_id=?",
                                   (job_id,)).fetchone()
            if row is None:
                raise UnknownJobError(f"no job {job_id} in the queue")
            state, attempts = JobState(row[0]), row[1]
            if state is not JobState.RUNNING:
                return state
            if attempts >= max_attempts:
                self._db.execute(
                    "UPDATE jobs SET state='failed', error=?, finished_s=? WHERE job_id=?",
                    (f"gave up after {attempts} attempts: {reason}", now_s, job_id))
                return JobState.FAILED
            self._db.execute("UPDATE jobs SET state='queued', worker_id=NULL WHERE job_id=?",
                             (job_id,))
            return JobState.QUEUED

    def recover(self, max_attempts: int, now_s: float) -> list[Job]:
        """After a restart: every running job goes back to queued (or fails when its attempts
        are used up). Returns the jobs that are queued now, in priority order."""
        with self._lock:
            running = [r[0] for r in self._db.execute(
                "SELECT job_id FROM jobs WHERE state='running'")]
        for job_id in running:
            self.requeue(job_id, "the dispatcher restarted while it ran", max_attempts, now_s)
        return self.pending()

    def delete(self, job_ids: Iterable[str], states: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(states))
        rows = [(job_id, *states) for job_id in job_ids]
        with self._tx():
            cur = self._db.executemany(
                f"DELETE FROM jobs WHERE job_id=? AND state IN ({marks})", rows)
        return cur.rowcount

    def delete_pending(self, job_ids: Iterable[str]) -> int:
        """Remove queued jobs without a trace (ComfyUI's POST /queue {"delete": [...]})."""
        return self.delete(job_ids, (JobState.QUEUED.value,))

    def clear_pending(self) -> int:
        with self._tx():
            return self._db.execute("DELETE FROM jobs WHERE state='queued'").rowcount

    def delete_history(self, job_ids: Iterable[str]) -> int:
        return self.delete(job_ids, _FINISHED)

    def clear_history(self) -> int:
        marks = ",".join("?" * len(_FINISHED))
        with self._tx():
            return self._db.execute(f"DELETE FROM jobs WHERE state IN ({marks})",
                                    _FINISHED).rowcount

    # --- reads --------------------------------------------------------------------------

    def _select(self, where: str, args: tuple = ()) -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs {where}", args).fetchall()
        return [_job_from_row(r) for r in rows]

    def get(self, job_id: str) -> Job | None:
        found = self._select("WHERE job_id=?", (job_id,))
        return found[0] if found else None

    def pending(self) -> list[Job]:
        """Queued jobs in the order they should run."""
        return self._select(f"WHERE state='queued' {_PENDING_ORDER}")

    def running(self) -> list[Job]:
        return self._select("WHERE state='running' ORDER BY started_s, seq")

    def history(self, max_items: int | None = None, offset: int = 0) -> list[Job]:
        """Finished jobs in the order they finished (oldest first). `offset` skips that many;
        a negative offset counts from the newest end, so (max_items=n, offset=-n) gives the
        newest n."""
        marks = ",".join("?" * len(_FINISHED))
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})",
                                     _FINISHED).fetchone()[0]
        start = max(0, total + offset) if offset < 0 else offset
        limit = -1 if max_items is None else max(0, max_items)
        return self._select(f"WHERE state IN ({marks}) ORDER BY finished_s, seq LIMIT ? OFFSET ?",
                            (*_FINISHED, limit, start))
