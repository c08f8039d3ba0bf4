"""The event log behind the hub: cursors, filtering by prompt, and a reader that fell
behind the ring."""
from actors.event_hub import EventLog
from farm.records.events import EventType, FarmEvent


def progress(prompt_id: str, value: int) -> FarmEvent:
    return FarmEvent(EventType.PROGRESS, {"prompt_id": prompt_id, "value": value, "max": 9, "node": "3"})


def test_a_reader_gets_everything_after_its_cursor_in_order():
    log = EventLog(capacity=100)
    log.publish([progress("a", 1), progress("b", 1)])
    page = log.read(0, limit=10)
    assert [e.data["prompt_id"] for e in page.events] == ["a", "b"] and page.cursor == 2
    log.publish([progress("a", 2)])
    again = log.read(page.cursor, limit=10)
    assert [e.data["value"] for e in again.events] == [2] and again.cursor == 3
    assert log.read(again.cursor, limit=10).events == []


def test_a_negative_cursor_means_from_now_on():
    log = EventLog(capacity=100)
    log.publish([progress("a", 1)])
    page = log.read(-1, limit=10)
    assert page.events == [] and page.cursor == 1


def test_filtering_by_prompt_advances_past_other_prompts_events():
    log = EventLog(capacity=100)
    log.publish([progress("a", 1), progress("b", 1), progress("a", 2), progress("b", 2)])
    page = log.read(0, limit=10, prompt_ids=frozenset({"b"}))
    assert [e.data["value"] for e in page.events] == [1, 2] and page.cursor == 4


def test_limit_leaves_the_cursor_on_the_first_unread_event():
    log = EventLog(capacity=100)
    log.publish([progress("a", i) for i in range(5)])
    page = log.read(0, limit=2)
    assert [e.data["value"] for e in page.events] == [0, 1] and page.cursor == 2
    assert [e.data["value"] for e in log.read(page.cursor, limit=10).events] == [2, 3, 4]


def test_a_reader_behind_the_ring_is_told_how_many_it_missed():
    log = EventLog(capacity=3)
    log.publish([progress("a", i) for i in range(5)])  # 0 and 1 fell out
    page = log.read(0, limit=10)
    assert page.missed == 2
    assert [e.data["value"] for e in page.events] == [2, 3, 4] and page.cursor == 5
