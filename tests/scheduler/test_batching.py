"""Cross-job batching: equal batch_key only, the batch limit, priority order."""
import pytest

from farm.scheduler.batching import form_batch
from farm.scheduler.jobs import Job, batch_run_s, drain_s
from farm.scheduler.queues import KeyedQueue


def queued(specs, max_batch=4) -> KeyedQueue:
    """specs: (job_id, number, batch_key, front); seq follows the list order."""
    queue = KeyedQueue(max_batch)
    for seq, (job_id, number, key, front) in enumerate(specs, start=1):
        queue.add(Job(job_id=job_id, number=number, batch_key=key, front=front, seq=seq,
                      checkpoint="a" if key != "kb" else "b", est_run_s=2.0, est_extra_s=0.5))
    return queue


def ids(batch):
    return [j.job_id for j in batch.jobs]


def test_batch_takes_the_head_key_in_priority_order_up_to_the_limit():
    queue = queued([("a1", 5, "ka", False), ("b1", 1, "kb", False), ("a2", 2, "ka", False),
                    ("a3", 9, "ka", False), ("a4", 3, "ka", False), ("a5", 4, "ka", False),
                    ("b2", 6, "kb", False)])
    first = form_batch(queue, max_batch=4)
    assert (first.batch_key, ids(first)) == ("kb", ["b1", "b2"])  # b1 has the best number
    second = form_batch(queue, max_batch=4)
    assert ids(second) == ["a2", "a4", "a5", "a1"]  # the limit leaves a3 queued
    assert second.expected_run_s == pytest.approx(2.0 + 3 * 0.5)
    assert ids(form_batch(queue, max_batch=4)) == ["a3"]
    assert form_batch(queue, max_batch=4) is None


def test_front_jobs_lead_and_a_named_key_is_honoured():
    queue = queued([("a1", 1, "ka", False), ("b1", 2, "kb", False), ("b2", 50, "kb", True)])
    assert ids(form_batch(queue, max_batch=8)) == ["b2", "b1"]
    queue = queued([("a1", 1, "ka", False), ("b1", 2, "kb", False)])
    assert ids(form_batch(queue, max_batch=8, batch_key="kb")) == ["b1"]
    assert ids(form_batch(queue, max_batch=8)) == ["a1"]


def test_jobs_without_a_batch_key_never_share_a_call():
    queue = queued([("s1", 1, "", False), ("s2", 2, "", False)])
    assert ids(form_batch(queue, max_batch=8)) == ["s1"]
    assert ids(form_batch(queue, max_batch=8)) == ["s2"]


def test_queue_drain_estimate_follows_batches():
    queue = queued([(f"a{i}", i, "ka", False) for i in range(6)] + [("b1", 9, "kb", False)])
    # ka: 6 jobs in batches of 4 -> 2 calls of 2.0 s plus 4 extra jobs of 0.5 s.
    assert queue.work_s("a") == pytest.approx(2 * 2.0 + 4 * 0.5)
    assert queue.total_work_s == pytest.approx(6.0 + 2.0)
    queue.remove("a0")
    assert queue.work_s("a") == pytest.approx(drain_s(2.0, 0.5, 5, 4)) == pytest.approx(5.5)
    assert batch_run_s(2.0, 0.5, 3) == 3.0


def test_a_batch_of_jobs_with_different_steps_is_expected_to_run_as_long_as_its_longest():
    queue = KeyedQueue(4)
    for seq, (job_id, run_s) in enumerate([("short", 2.0), ("long", 3.0), ("mid", 2.5)], start=1):
        queue.add(Job(job_id=job_id, number=seq, batch_key="k", front=False, seq=seq, checkpoint="a",
                      est_run_s=run_s, est_extra_s=run_s / 4))
    batch = form_batch(queue, max_batch=4)
    assert ids(batch) == ["short", "long", "mid"]
    assert batch.expected_run_s == pytest.approx(batch_run_s(3.0, 0.75, 3))
