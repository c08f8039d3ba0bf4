"""Ledger without Ray: ComfyUI's prompt numbers, history messages (kept, bounded), a
batch's reports recorded (done, failed, retried), failures the dispatcher decides
announced, end markers only for finished prompts, and cancel of queued vs running."""
from __future__ import annotations

import pickle

from farm.errors import DuplicatePromptError
from farm.records.events import EventType
from farm.records.history import HistoryStatus
from farm.records.residency import GB, ResidencyReport
from farm.scheduler.core import CoreConfig
from farm.scheduler.jobs import Job, JobState
from farm.scheduler.ledger import Ledger
from farm.scheduler.messages import BatchResult, FailureKind, JobReport, Message
from farm.scheduler.placement import FarmPolicy
from farm.scheduler.store import JobStore

EMPTY = ResidencyReport(gpu_free_bytes=12 * 10**9)
IMAGES = {"9": {"images": [{"filename": "img_00001_.png", "subfolder": "", "type": "output"}]}}


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def make_ledger(store=None, max_attempts=3, workers=("w1", "w2"), max_kept_messages=10_000):
    clock = Clock()
    ledger = Ledger(store or JobStore(":memory:"), FarmPolicy(), clock,
                    CoreConfig(max_batch=8, max_attempts=max_attempts), max_kept_messages=max_kept_messages)
    for worker_id in workers:
        ledger.register_worker(worker_id, EMPTY)
    return ledger, clock


def job(n: int, front: bool = False, key: str = "k", checkpoint: str = "a.safetensors") -> Job:
    return Job(job_id=f"p{n}", number=None, workflow={"9": {"class_type": "SaveImage"}}, outputs_to_execute=["9"],
               client_id="c1", front=front, checkpoint=checkpoint, checkpoint_bytes=2 * GB, batch_key=key)


def lifecycle(prompt_id: str, *, ok: bool = True) -> list[Message]:
    end = EventType.EXECUTION_SUCCESS if ok else EventType.EXECUTION_ERROR
    return [Message(EventType.EXECUTION_START, {"prompt_id": prompt_id, "timestamp": 1}),
            Message(end, {"prompt_id": prompt_id, "timestamp": 2})]


def report(prompt_id: str, failure: FailureKind | None = None, writes=(), **fields) -> JobReport:
    ok = failure is None
    return JobReport(prompt_id, "w1", outputs=IMAGES if ok else {}, failure=failure,
                     error=None if ok else fields.pop("error", "node 3 raised"),
                     messages=lifecycle(prompt_id, ok=ok), writes=list(writes), **fields)


def result(*reports: JobReport) -> BatchResult:
    return BatchResult(list(reports), EMPTY, [])


def run_on(ledger: Ledger, worker_id: str = "w1") -> list[str]:
    dispatch = ledger.next_batch(worker_id, EMPTY)
    assert dispatch is not None
    assert [i.prompt_id for i in dispatch.items] == list(dispatch.batch.job_ids)
    return list(dispatch.batch.job_ids)


def kinds(events) -> list[EventType]:
    return [e.type for e in events]


def test_numbers_count_up_front_negates_and_a_restart_continues(tmp_path):
    store = JobStore(tmp_path / "queue.db")
    ledger, _ = make_ledger(store)
    out = ledger.submit([job(0), job(1, front=True)])
    assert [(r.prompt_id, r.number) for r in out.results] == [("p0", 1), ("p1", -2)]
    assert out.rejected is None and kinds(out.events) == [EventType.STATUS]
    assert out.events[0].data["status"]["exec_info"]["queue_remaining"] == 2
    given = job(2)
    given.number = 10  # a number the client chose stays; the counter moves past it
    assert ledger.submit([given, job(3)]).results[1].number == 11
    store.close()
    restarted, _ = make_ledger(JobStore(tmp_path / "queue.db"))
    assert restarted.submit([job(4)]).results[0].number == 12


def test_a_reused_id_stops_the_list_but_keeps_the_jobs_before_it():
    ledger, _ = make_ledger()
    ledger.submit([job(0)])
    out = ledger.submit([job(1, key="other"), job(0), job(2)])
    assert [r.prompt_id for r in out.results] == ["p1"]
    assert isinstance(out.rejected, DuplicatePromptError)
    assert ledger.job_state("p1") is JobState.QUEUED and ledger.job_state("p2") is None
    assert out.events[0].data["status"]["exec_info"]["queue_remaining"] == 2


def test_submit_names_an_idle_worker_to_wake():
    ledger, _ = make_ledger()
    assert ledger.next_batch("w1", EMPTY) is None and ledger.next_batch("w2", EMPTY) is None  # both idle now
    out = ledger.submit([job(0)])
    assert len(out.wake) == 1 and out.wake[0] in {"w1", "w2"}


def test_a_successful_batch_is_done_with_its_messages_in_history_and_an_end_marker():
    ledger, clock = make_ledger()
    ledger.submit([job(0), job(1)])
    assert run_on(ledger) == ["p0", "p1"]
    clock.now_s += 5
    out = ledger.finish_batch(result(report("p0"), report("p1")))
    assert out.finished
    # ComfyUI's order: the queue status once history holds them, then each end marker
    assert kinds(out.events) == [EventType.STATUS, EventType.EXECUTING, EventType.EXECUTING]
    assert [e.data for e in out.events[1:]] == [{"node": None, "prompt_id": p} for p in ("p0", "p1")]
    assert all(e.client_id == "c1" for e in out.events[1:])
    item = ledger.history_item("p0")
    assert item.status is HistoryStatus.SUCCESS and item.completed and item.outputs == IMAGES
    assert [m.event for m in item.messages] == [EventType.EXECUTION_START, EventType.EXECUTION_SUCCESS]
    assert item.number == 1 and item.worker_id == "w1" and item.attempts == 1
    assert item.timings.submitted_at_s == 1000.0 and item.timings.finished_at_s == 1005.0
    assert [h.prompt_id for h in ledger.history()] == ["p0", "p1"]
    finished = ledger.finished(["p0", "p1", "nope"])
    assert [i.prompt_id for i in finished.items] == ["p0", "p1"] and finished.unknown == ["nope"]
    assert ledger.remaining() == 0


def test_a_node_failure_fails_at_once_and_the_worker_already_announced_it():
    ledger, _ = make_ledger()
    ledger.submit([job(0)])
    run_on(ledger)
    out = ledger.finish_batch(result(report("p0", FailureKind.NODE, error="node 3: bad cfg")))
    assert kinds(out.events) == [EventType.STATUS, EventType.EXECUTING]  # no second execution_error
    item = ledger.history_item("p0")
    assert item.status is HistoryStatus.ERROR and not item.completed
    assert ledger.job("p0").error == "node 3: bad cfg"


def test_a_failed_write_retries_the_job_then_fails_it_with_the_writers_message():
    ledger, _ = make_ledger(max_attempts=2)
    ledger.submit([job(0)])
    for attempt in (1, 2):
        assert run_on(ledger) == ["p0"]
        handle = object()
        out = ledger.finish_batch(result(report("p0", writes=[handle])),
                                  {handle: OSError("[Errno 28] No space left on device")})
        assert ledger.job("p0").attempts == attempt
    assert ledger.job_state("p0") is JobState.FAILED
    assert "writing the images failed: [Errno 28] No space left on device" in ledger.job("p0").error
    # nobody else told the client: the ledger announces it, then the end marker
    assert kinds(out.events) == [EventType.EXECUTION_ERROR, EventType.STATUS, EventType.EXECUTING]
    error = out.events[0].data
    assert error["prompt_id"] == "p0" and "No space left" in error["exception_message"]
    assert error["timestamp"] == 1_000_000  # the injected clock, in ms
    assert [m.event for m in ledger.history_item("p0").messages] == [EventType.EXECUTION_ERROR]


def test_a_retried_job_reaches_its_worker_marked_as_a_retry():
    """The worker then runs its output nodes again rather than from its node cache, which
    would write no files (the retry after a failed write would end done without images)."""
    ledger, _ = make_ledger()
    ledger.submit([job(0)])
    [first] = ledger.next_batch("w1", EMPTY).items
    assert first.attempt == 1
    handle = object()
    ledger.finish_batch(result(report("p0", writes=[handle])), {handle: OSError("disk full")})
    [again] = ledger.next_batch("w1", EMPTY).items
    assert again.prompt_id == "p0" and again.attempt == 2


def test_only_the_job_whose_write_failed_is_retried():
    ledger, _ = make_ledger()
    ledger.submit([job(0), job(1)])
    run_on(ledger)
    good, bad = object(), object()
    out = ledger.finish_batch(result(report("p0", writes=[good]), report("p1", writes=[bad])),
                              {bad: OSError("read-only file system")})
    assert ledger.job_state("p0") is JobState.DONE and ledger.job_state("p1") is JobState.QUEUED
    assert kinds(out.events) == [EventType.STATUS, EventType.EXECUTING]  # p1 is not finished: no marker


def test_an_invalid_job_is_retried_elsewhere_and_an_out_of_memory_one_is_not():
    ledger, _ = make_ledger()
    ledger.submit([job(0, key="a"), job(1, key="b", checkpoint="b.safetensors")])
    taken = run_on(ledger) + run_on(ledger, "w2")
    assert sorted(taken) == ["p0", "p1"]
    ledger.finish_batch(result(report("p0", FailureKind.INVALID, error="no checkpoint here"),
                               report("p1", FailureKind.OUT_OF_MEMORY, error="out of memory")))
    assert ledger.job_state("p0") is JobState.QUEUED
    assert ledger.job_state("p1") is JobState.FAILED


def test_a_lost_workers_jobs_go_back_and_fail_announced_when_attempts_are_used_up():
    ledger, _ = make_ledger(max_attempts=2)
    ledger.submit([job(0)])
    run_on(ledger, "w1")
    out = ledger.worker_lost("w1", registered=True)
    assert out.finished and out.wake == ["w2"] and out.events == []  # requeued: no marker yet
    ledger.register_worker("w1", EMPTY)
    assert run_on(ledger, "w2") == ["p0"]
    out = ledger.worker_lost("w2", registered=True)
    assert ledger.job_state("p0") is JobState.FAILED and "worker w2 was lost" in ledger.job("p0").error
    assert kinds(out.events) == [EventType.EXECUTION_ERROR, EventType.EXECUTING]
    assert out.events[0].client_id == "c1"
    again = ledger.finish_batch(result(report("p0", FailureKind.NODE)))  # a late report changes nothing
    assert EventType.EXECUTION_ERROR not in kinds(again.events)
    assert ledger.worker_lost("w9", registered=False).events == []


def test_kept_messages_are_bounded_newest_kept_and_history_falls_back_to_the_record():
    ledger, _ = make_ledger(max_kept_messages=2)
    ledger.submit([job(n, key=f"k{n}") for n in range(3)])
    for n in range(3):
        assert run_on(ledger) == [f"p{n}"]
        ledger.finish_batch(result(report(f"p{n}")))
    assert ledger.history_item("p0").messages[0].data["timestamp"] == 1_000_000  # rebuilt from the store
    assert ledger.history_item("p2").messages[0].data == {"prompt_id": "p2", "timestamp": 1}  # the worker's
    assert ledger.delete_history(["p2"]) == 1 and ledger.history_item("p2") is None
    assert ledger.clear_history() == 2 and ledger.history() == []


def test_cancel_of_a_queued_job_deletes_it_and_of_a_running_one_interrupts_its_worker():
    ledger, _ = make_ledger()
    ledger.submit([job(0), job(1, key="other")])
    running = run_on(ledger, "w1")
    queued = "p1" if running == ["p0"] else "p0"
    out = ledger.cancel(queued)
    assert out.stopped == [queued] and out.interrupts == {} and out.finished
    assert ledger.job_state(queued) is None and ledger.finished([queued]).unknown == [queued]
    out = ledger.cancel(running[0])
    assert out.stopped == running and out.interrupts == {"w1": running} and not out.finished
    ledger.finish_batch(result(report(running[0], FailureKind.INTERRUPTED, error="interrupted by the user")))
    assert ledger.job_state(running[0]) is JobState.CANCELLED
    assert ledger.cancel(running[0]).stopped == []  # finished: nothing to cancel
    assert ledger.cancel("never").stopped == []


def test_interrupt_all_names_each_workers_running_prompts():
    ledger, _ = make_ledger()
    ledger.submit([job(0, key="a"), job(1, key="b", checkpoint="b.safetensors")])
    first, second = run_on(ledger, "w1"), run_on(ledger, "w2")
    out = ledger.interrupt()
    assert sorted(out.stopped) == sorted(first + second)
    assert out.interrupts == {"w1": first, "w2": second}
    assert ledger.interrupt("nothing-running").stopped == []


def test_queue_view_delete_and_clear():
    ledger, _ = make_ledger()
    ledger.submit([job(0), job(1, key="b"), job(2, key="c"), job(3, key="d")])
    running = run_on(ledger, "w1")
    view = ledger.queue()
    assert [q.prompt_id for q in view.running] == running and view.running[0].worker_id == "w1"
    assert len(view.pending) == 3 and all(q.worker_id is None for q in view.pending)
    pending = [q.prompt_id for q in view.pending]
    out = ledger.delete_queued([pending[0], running[0]])  # a running one is not deleted
    assert out.count == 1 and out.events[0].data["status"]["exec_info"]["queue_remaining"] == 3
    assert ledger.clear_queue().count == 2 and ledger.remaining() == 1


def test_worker_statuses_show_backlog_and_who_did_not_answer():
    ledger, _ = make_ledger()
    ledger.submit([job(0)])
    run_on(ledger, "w1")
    by_id = {s.worker_id: s for s in ledger.worker_statuses({"w1": None, "w2": None})}
    assert by_id["w1"].backlog == 1 and by_id["w2"].backlog == 0
    assert not by_id["w1"].alive


def test_answers_are_picklable_for_ray():
    ledger, _ = make_ledger()
    out = ledger.submit([job(0)])
    for answer in (out, ledger.finished(["p0"]), ledger.queue(), ledger.cancel("p0")):
        assert pickle.loads(pickle.dumps(answer)) == answer
