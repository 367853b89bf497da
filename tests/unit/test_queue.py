"""The work queue, its rate limiter and its workers, with an injected clock where time matters."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.core.queue import (
    Bucket,
    Done,
    Permanent,
    RateLimiter,
    RequeueAfter,
    Result,
    Retry,
    Workers,
    WorkQueue,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_waits_once_however_often_it_is_added() -> None:
    queue = WorkQueue()
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    assert queue.depth() == 2
    assert queue.get(timeout=0) == "a"
    assert queue.get(timeout=0) == "b"
    assert queue.get(timeout=0.01) is None


def test_a_key_added_while_processing_comes_back_once_after_done() -> None:
    queue = WorkQueue()
    queue.add("a")
    assert queue.get(timeout=0) == "a"
    queue.add("a")
    queue.add("a")
    assert queue.get(timeout=0.01) is None, "never handed out while it is processing"
    queue.done("a")
    assert queue.get(timeout=0) == "a"
    queue.done("a")
    assert queue.get(timeout=0.01) is None, "re-added once, not twice"


def test_delayed_keys_come_due_by_the_injected_clock() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock)
    queue.add("late", delay=30)
    queue.add("soon", delay=1)
    assert queue.get(timeout=0) is None
    clock.now += 1
    assert queue.get(timeout=0) == "soon"
    clock.now += 29
    assert queue.get(timeout=0) == "late"


def test_no_key_is_ever_on_two_workers() -> None:
    queue = WorkQueue()
    running: dict[str, int] = {}
    overlaps: list[str] = []
    handled: list[str] = []
    lock = threading.Lock()

    def handler(key: str) -> Result:
        with lock:
            running[key] = running.get(key, 0) + 1
            if running[key] > 1:
                overlaps.append(key)
        time.sleep(0.002)
        with lock:
            running[key] -= 1
            handled.append(key)
        return Done()

    workers = Workers(queue, handler, count=4, budget=lambda _k: 60)
    workers.start()
    try:
        for _ in range(200):
            for key in ("a", "b", "c"):
                queue.add(key)
            time.sleep(0.0005)
        deadline = time.monotonic() + 10
        while queue.depth() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        workers.stop(5)
    assert overlaps == []
    assert {"a", "b", "c"} <= set(handled)
    assert len(handled) < 600, "adds while waiting or processing were folded together"
    assert workers.handled("a") == handled.count("a")


def test_rate_limiter_backs_off_per_key_and_forgets() -> None:
    limiter = RateLimiter(base=1, cap=8)
    assert [limiter.when("a") for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    assert limiter.when("b") == 1
    limiter.forget("a")
    assert limiter.failures("a") == 0 and limiter.when("a") == 1


@pytest.mark.parametrize(
    ("result", "delay"),
    [
        pytest.param(Done(), None, id="done"),
        pytest.param(Permanent("build failed"), None, id="permanent"),
        pytest.param(RequeueAfter(5), 5.0, id="requeue-after"),
        pytest.param(Retry("engine down"), 1.0, id="retry-backs-off"),
        pytest.param(Retry("port taken", at_least=10), 10.0, id="retry-at-least"),
    ],
)
def test_results_requeue_as_they_say(result: Result, delay: float | None) -> None:
    clock = FakeClock()
    queue = WorkQueue(clock)
    workers = Workers(queue, lambda _k: result, count=1, budget=lambda _k: 60, clock=clock)
    workers.apply("a", result)
    if delay is None:
        clock.now += 3600
        assert queue.get(timeout=0) is None
        return
    clock.now += delay - 0.001
    assert queue.get(timeout=0) is None
    clock.now += 0.001
    assert queue.get(timeout=0) == "a"


def test_repeated_retries_grow_and_done_resets_them() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock)
    workers = Workers(queue, lambda _k: Done(), count=1, budget=lambda _k: 60, clock=clock)
    waits = []
    for _ in range(4):
        workers.apply("a", Retry("again"))
        before = clock.now
        while queue.get(timeout=0) is None:
            clock.now += 0.5
        queue.done("a")
        waits.append(clock.now - before)
    assert waits == [1, 2, 4, 8]
    workers.apply("a", Done())
    workers.apply("a", Retry("again"))
    clock.now += 1
    assert queue.get(timeout=0) == "a"


def test_a_handler_that_raises_is_retried_and_the_loop_lives() -> None:
    queue = WorkQueue()
    calls: list[str] = []

    def handler(key: str) -> Result:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return Done()

    workers = Workers(queue, handler, count=1, budget=lambda _k: 60, limiter=RateLimiter(base=0.01))
    workers.start()
    try:
        queue.add("a")
        deadline = time.monotonic() + 5
        while workers.handled("a") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        workers.stop(5)
    assert calls == ["a", "a"]


def test_hung_reports_keys_past_their_budget() -> None:
    clock = FakeClock()
    queue = WorkQueue()
    release = threading.Event()
    started = threading.Event()

    def handler(_key: str) -> Result:
        started.set()
        release.wait(5)
        return Done()

    workers = Workers(queue, handler, count=1, budget=lambda _k: 60, clock=clock)
    workers.start()
    try:
        queue.add("slow")
        assert started.wait(5)
        assert workers.hung() == []
        clock.now += 61
        assert workers.hung() == ["slow"]
    finally:
        release.set()
        workers.stop(5)


def test_a_key_waits_for_the_earliest_time_it_was_added_for() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    queue.add("a", delay=1)
    queue.add("a", delay=2)
    queue.add("a", delay=5)
    assert queue.depth() == 1
    clock.now += 1
    assert queue.get(timeout=0) == "a"
    queue.done("a")
    clock.now += 10
    assert queue.get(timeout=0) is None, "handed out once, not once per add"


def test_a_sooner_add_moves_the_wait_up_and_an_add_now_replaces_it() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock)
    queue.add("a", delay=30)
    queue.add("a", delay=2)
    clock.now += 2
    assert queue.get(timeout=0) == "a"
    queue.done("a")
    queue.add("b", delay=30)
    queue.add("b")
    assert queue.get(timeout=0) == "b"
    queue.done("b")
    clock.now += 30
    assert queue.get(timeout=0) is None, "the add now took the wait's place"


def test_discard_drops_a_wait() -> None:
    clock = FakeClock()
    queue: WorkQueue[tuple[str, str]] = WorkQueue(clock)
    queue.add(("www", "i1"), delay=1)
    queue.discard(("www", "i1"))
    assert queue.depth() == 0
    clock.now += 5
    assert queue.get(timeout=0) is None
    queue.add(("www", "i1"), delay=3)  # a new wait, not the dropped one
    clock.now += 1
    assert queue.get(timeout=0) is None
    clock.now += 2
    assert queue.get(timeout=0) == ("www", "i1")


def test_the_overall_bucket_bounds_retries_across_keys() -> None:
    clock = FakeClock()
    limiter = RateLimiter(base=0.001, cap=1, overall=Bucket(rate=10, burst=2, clock=clock))
    waits = [limiter.when(key) for key in ("a", "b", "c", "d")]
    assert waits[:2] == [0.001, 0.001], "the burst goes through on the keys' own backoff"
    assert waits[2] == pytest.approx(0.1) and waits[3] == pytest.approx(0.2)
    clock.now += 1
    assert limiter.when("e") == 0.001, "the bucket refills"


def test_a_routine_add_never_cuts_a_wait_short() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock)
    queue.add("a", delay=60)
    queue.add("a", routine=True)
    assert queue.get(timeout=0) is None
    queue.add("b", routine=True)  # nothing to wait for: at once
    assert queue.get(timeout=0) == "b"
    queue.add("a")
    assert queue.get(timeout=0) == "a"
