"""The durable queue: what survives closing and reopening the SQLite file."""
import sqlite3

import pytest

from farm.errors import ConfigError, DuplicatePromptError
from farm.scheduler.jobs import Job, JobState
from farm.scheduler.store import JobStore


def job(job_id: str, number: float, front: bool = False, **kw) -> Job:
    return Job(job_id=job_id, number=number, front=front,
               workflow={"3": {"class_type": "KSampler", "inputs": {"seed": number}}}, **kw)


def test_reopen_keeps_pending_and_requeues_running_with_attempts(tmp_path):
    path = tmp_path / "queue.db"
    store = JobStore(path)
    for i in range(3):
        store.add(job(f"p{i}", i, checkpoint="a.safetensors", batch_key="k", est_run_s=2.5))
    store.claim(["p0"], "w1", now_s=10.0)
    store.close()

    reopened = JobStore(path)
    assert [j.state for j in (reopened.get("p0"), reopened.get("p1"))] == [JobState.RUNNING, JobState.QUEUED]
    pending = reopened.recover(max_attempts=3, now_s=20.0)
    assert [j.job_id for j in pending] == ["p0", "p1", "p2"]
    first = reopened.get("p0")
    assert (first.state, first.attempts, first.worker_id) == (JobState.QUEUED, 1, None)
    # Everything the scheduler needs comes back from the file, not from memory.
    assert (first.checkpoint, first.batch_key, first.est_run_s) == ("a.safetensors", "k", 2.5)
    assert first.workflow["3"]["inputs"]["seed"] == 0
    assert reopened.running() == []


def test_recover_fails_a_job_that_used_up_its_attempts(tmp_path):
    path = tmp_path / "queue.db"
    store = JobStore(path)
    store.add(job("p0", 1))
    store.claim(["p0"], "w1", 1.0)
    store.close()
    reopened = JobStore(path)
    assert reopened.recover(max_attempts=1, now_s=2.0) == []
    failed = reopened.get("p0")
    assert failed.state is JobState.FAILED
    assert "1 attempts" in failed.error and "restarted" in failed.error


def test_file_store_uses_wal(tmp_path):
    path = tmp_path / "queue.db"
    JobStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "queue.db"
    JobStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ConfigError, match="v99"):
        JobStore(path)


def test_completion_is_idempotent():
    store = JobStore()
    store.add(job("p0", 1))
    store.claim(["p0"], "w1", 1.0)
    assert store.complete("p0", {"9": {"images": [{"filename": "a.png"}]}}, 5.0) is True
    assert store.complete("p0", {"9": {"images": [{"filename": "late.png"}]}}, 7.0) is False
    assert store.fail("p0", "late failure", 8.0) is False
    done = store.get("p0")
    assert (done.state, done.finished_s, done.error) == (JobState.DONE, 5.0, None)
    assert done.outputs["9"]["images"][0]["filename"] == "a.png"
    assert [j.job_id for j in store.history()] == ["p0"]


def test_pending_order_front_then_number_then_submission():
    store = JobStore()
    for job_id, number, front in [("a", 5, False), ("b", 1, False), ("c", 3, False),
                                  ("d", 10, True), ("e", 1, False), ("f", -2, True)]:
        store.add(job(job_id, number, front))
    assert [j.job_id for j in store.pending()] == ["f", "d", "b", "e", "c", "a"]


def test_duplicate_prompt_id_is_refused():
    store = JobStore()
    store.add(job("p0", 1))
    with pytest.raises(DuplicatePromptError, match="p0"):
        store.add(job("p0", 2))


def test_cancel_queued_job_moves_it_to_history_once():
    store = JobStore()
    store.add(job("p0", 1))
    store.add(job("p1", 2))
    assert store.cancel("p0", "cancelled while queued", 3.0) is True
    assert store.cancel("p0", "again", 4.0) is False
    assert [j.job_id for j in store.pending()] == ["p1"]
    cancelled = store.get("p0")
    assert (cancelled.state, cancelled.error) == (JobState.CANCELLED, "cancelled while queued")


def test_requeue_counts_attempts_then_fails():
    store = JobStore()
    store.add(job("p0", 1))
    for attempt in (1, 2):
        store.claim(["p0"], f"w{attempt}", float(attempt))
        state = store.requeue("p0", "worker lost", max_attempts=2, now_s=float(attempt))
        assert state is (JobState.QUEUED if attempt == 1 else JobState.FAILED)
    final = store.get("p0")
    assert final.attempts == 2 and "worker lost" in final.error


def test_history_paging_in_finish_order():
    store = JobStore()
    for i in range(5):
        store.add(job(f"p{i}", i))
    for i in (3, 0, 4, 1, 2):  # finish out of submission order
        store.claim([f"p{i}"], "w", float(i))
        store.complete(f"p{i}", {}, now_s=10.0 + len(store.history()))
    ids = lambda items: [j.job_id for j in items]
    assert ids(store.history()) == ["p3", "p0", "p4", "p1", "p2"]
    assert ids(store.history(max_items=2)) == ["p3", "p0"]
    assert ids(store.history(max_items=2, offset=2)) == ["p4", "p1"]
    assert ids(store.history(max_items=2, offset=-2)) == ["p1", "p2"]
    assert ids(store.history(offset=4)) == ["p2"]


def test_delete_and_clear_touch_only_their_side():
    store = JobStore()
    for i in range(4):
        store.add(job(f"p{i}", i))
    store.claim(["p0"], "w", 1.0)
    store.complete("p0", {}, 2.0)
    assert store.delete_pending(["p0", "p1"]) == 1  # p0 is history, not pending
    assert [j.job_id for j in store.pending()] == ["p2", "p3"]
    assert store.delete_history(["p0", "p2"]) == 1
    assert store.history() == []
    assert store.clear_pending() == 2
    assert store.pending() == []


def test_a_job_keeps_the_plan_it_was_validated_with_across_a_reopen(tmp_path, tiny_models):
    """Prepared once at submission: after a restart the worker gets the same plan (order,
    signatures, typed constants), not a new planning of the stored prompt."""
    import json
    from importlib.resources import files

    from farm.nodes.registry import default_registry
    from farm.nodes.spec import NodeContext
    from farm.records.paths import FarmPaths
    from farm.workflow.prepare import prepare

    workflow = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
    ctx = NodeContext.for_paths(FarmPaths.under(tmp_path, tiny_models))
    prepared = prepare(workflow, default_registry(), ctx, {"3.seed": "42"}, prompt_id="p-plan")
    path = tmp_path / "queue.db"
    store = JobStore(path)
    store.add(Job.from_prepared(prepared, ctx.models, number=1))
    store.close()

    back = JobStore(path).get("p-plan")
    assert back.plan == prepared.plan
    assert back.plan.workflow.nodes["3"].inputs["seed"] == 42  # the INT the plan made of "42"
    assert back.checkpoint == "tiny-sd15.safetensors" and back.checkpoint_bytes > 0
