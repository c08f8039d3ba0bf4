"""A queue database that cannot be used at start: another connection holds it locked, or
the file is no SQLite database (garbage, truncated, damaged pages). The store says so in
one ConfigError naming the file, within its busy timeout (never a hang), and a queued job
in a database that was only locked is still there once the lock goes (never lost); the
CLI prints that one line and exits 2 before it starts Ray; a dispatcher whose store
cannot open fails its first call at once, naming the file, instead of being retried."""
from __future__ import annotations

import sqlite3
import time

import pytest

from farm.cli import EXIT_BAD_INPUT, main
from farm.errors import ConfigError, FarmUnavailable
from farm.scheduler.jobs import Job
from farm.scheduler.store import JobStore

BUSY_S = 0.5


def a_job(job_id: str) -> Job:
    return Job(job_id=job_id, number=1, front=False, workflow={"3": {"class_type": "KSampler", "inputs": {}}})


@pytest.fixture
def real_db(tmp_path):
    """A queue file with one queued job, closed."""
    path = tmp_path / "queue.sqlite"
    store = JobStore(path)
    store.add(a_job("kept"))
    store.close()
    return path


def corrupt(path, how: str) -> None:
    data = path.read_bytes()
    if how == "one page":  # header and schema intact, a table page overwritten: only a check finds it
        store = JobStore(path)
        for i in range(200):
            store.add(a_job(f"filler{i}"))
        store.close()
        data = bytearray(path.read_bytes())
        data[4096 * 5: 4096 * 6] = b"\x5a" * 4096
    path.write_bytes({"garbage": b"not a database at all " * 200,
                      "truncated": data[: len(data) // 3],
                      "pages": data[:100] + bytes((i * 131) % 256 for i in range(len(data) - 100)),
                      "one page": data}[how])


@pytest.mark.parametrize("how", ["garbage", "truncated", "pages", "one page"])
def test_a_corrupt_queue_file_is_one_clear_error(real_db, how):
    corrupt(real_db, how)
    with pytest.raises(ConfigError) as caught:
        JobStore(real_db, busy_timeout_s=BUSY_S)
    message = str(caught.value)
    assert str(real_db) in message and "not a readable queue database" in message and "\n" not in message


@pytest.mark.parametrize("journal", ["rollback", "wal"])
def test_a_locked_queue_file_fails_after_the_busy_timeout_and_loses_nothing(real_db, journal):
    holder = sqlite3.connect(real_db, isolation_level=None)
    if journal == "rollback":
        holder.execute("PRAGMA journal_mode=DELETE")
    else:  # WAL lets readers past an ordinary lock; an exclusive locking mode shuts them out too
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"is locked by another process .*own --db") as caught:
        JobStore(real_db, busy_timeout_s=BUSY_S)
    assert BUSY_S * 0.8 <= time.monotonic() - started < BUSY_S + 5  # it waited for the lock, then gave up
    assert str(real_db) in str(caught.value)
    holder.execute("ROLLBACK")
    holder.close()
    store = JobStore(real_db)  # the lock is gone: the job queued before is still there
    assert [j.job_id for j in store.pending()] == ["kept"]
    store.close()


def test_farm_serve_on_a_corrupt_queue_is_one_line_and_exit_2_before_ray(real_db, capsys, monkeypatch):
    import ray

    corrupt(real_db, "garbage")
    was_up = ray.is_initialized()
    code = main(["serve", "--db", str(real_db), "--port", "1"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farm serve: ") and str(real_db) in lines[0], err
    assert ray.is_initialized() == was_up  # refused before an embedded Ray was started


def test_farm_serve_on_a_locked_queue_is_one_line_and_exit_2(real_db, capsys):
    holder = sqlite3.connect(real_db, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        code = main(["serve", "--db", str(real_db), "--port", "1"])
        assert time.monotonic() - started < 30
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and len(err.splitlines()) == 1 and "is locked by another process" in err, err


def test_a_dispatcher_on_a_corrupt_queue_fails_at_once_naming_the_file(ray_farm, real_db):
    """Ray would restart a dispatcher that died; one whose __init__ raised would raise again,
    so the caller is told at once (FarmUnavailable with the store's reason)."""

    import ray

    from actors import cluster
    from actors.dispatcher import Dispatcher

    corrupt(real_db, "truncated")
    config = cluster.FarmConfig(paths=ray_farm.paths, db=real_db)
    handle = Dispatcher.options(max_restarts=-1, num_cpus=0).remote(config)
    started = time.monotonic()
    try:
        with pytest.raises(FarmUnavailable) as caught:
            cluster.FarmCluster(handle, None, None).call("ready", timeout_s=120)
        assert time.monotonic() - started < cluster.DISPATCHER_RETRY_S / 2
        assert "could not start" in str(caught.value) and str(real_db) in str(caught.value), str(caught.value)
        assert "not a readable queue database" in str(caught.value)
    finally:
        ray.kill(handle)


def test_a_lock_taken_while_the_farm_runs_refuses_new_prompts_and_is_waited_out_by_running_ones(real_db):
    """A submit meets the lock: QueueLocked soon (the prompt is not queued: nothing lost).
    The farm's own write (a running job completing) waits the lock out instead of failing:
    a failed completion would leave a job that ran never ending."""
    import threading

    from farm.errors import QueueLocked

    store = JobStore(real_db, busy_timeout_s=BUSY_S, write_patience_s=30)
    store.claim(["kept"], "w1", now_s=1.0)
    holder = sqlite3.connect(real_db, isolation_level=None, check_same_thread=False)  # released by a timer
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(QueueLocked, match=r"is locked by another process .*was not queued; send it again"):
        store.add(a_job("refused"))
    assert store.get("refused") is None
    threading.Timer(1.5, lambda: (holder.execute("ROLLBACK"), holder.close())).start()
    started = time.monotonic()
    assert store.complete("kept", {"9": {"images": []}}, now_s=2.0)  # waited, then written
    assert 1.0 < time.monotonic() - started < 30
    assert store.get("kept").state.value == "done"
    store.add(a_job("later"))  # the lock is gone: submits work again
    store.close()


def test_on_the_farm_a_lock_refuses_a_submit_in_one_line_and_a_running_job_still_ends(farm, txt2img):
    """The session farm's own queue file, locked from outside while a job runs."""
    import threading

    from farm.errors import QueueLocked

    db = farm.paths.input.parent / "queue.sqlite"  # tests/conftest.py puts it in the farm's root
    assert db.is_file(), db
    running = farm.submit(txt2img, {"3.steps": 30, "3.seed": 1300})  # ends while the lock is held
    deadline = time.monotonic() + 120
    while not any(i.prompt_id == running.prompt_id for i in farm.status().queue.running):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(8.0, lambda: (holder.execute("ROLLBACK"), holder.close()))
    release.start()
    try:
        with pytest.raises(QueueLocked) as caught:  # after the store's 5 s busy timeout
            farm.submit(txt2img, {"3.seed": 1301})
        assert "\n" not in str(caught.value) and str(db) in str(caught.value), str(caught.value)
        result = running.outcome(120)  # its completion waited for the lock instead of failing
        assert result.ok and result.attempts == 1, result.error
    finally:
        release.join()
    assert farm.submit(txt2img, {"3.seed": 1302}).result(120).ok
