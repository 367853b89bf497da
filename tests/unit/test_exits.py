"""The exit watch: real processes, real pidfds. A watched process that dies is reported at
once; one stopped by the daemon itself is not; a pid that is someone else's is never
watched."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from reconciler.core.spec import ProjectId
from reconciler.runtimes.process.exits import ExitWatch
from reconciler.runtimes.process.processes import process_start_time


@pytest.fixture
def running() -> Iterator[tuple[ExitWatch, queue.Queue[ProjectId | None]]]:
    heard: queue.Queue[ProjectId | None] = queue.Queue()
    watch = ExitWatch(process_start_time)
    stop = threading.Event()
    thread = threading.Thread(target=watch.run, args=(heard.put, stop), daemon=True)
    thread.start()
    for _ in range(500):  # until the watcher listens
        if watch._changed is not None:
            break
        time.sleep(0.01)
    yield watch, heard
    stop.set()
    thread.join(5)
    watch.close()


def sleeper() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(["sleep", "60"])
    start = process_start_time(proc.pid)
    assert start is not None
    return proc, start


def test_a_watched_process_that_dies_is_reported_at_once(
    running: tuple[ExitWatch, queue.Queue[ProjectId | None]],
) -> None:
    watch, heard = running
    proc, start = sleeper()
    assert watch.watch(proc.pid, start, ProjectId("web"))
    assert watch.alive(proc.pid, start)
    proc.kill()
    assert heard.get(timeout=5) == "web"
    proc.wait()
    assert not watch.alive(proc.pid, start), "the watch ended with the process"


def test_a_stop_of_our_own_is_no_news(
    running: tuple[ExitWatch, queue.Queue[ProjectId | None]],
) -> None:
    watch, heard = running
    proc, start = sleeper()
    assert watch.watch(proc.pid, start, ProjectId("web"))
    watch.forget(proc.pid, start)
    proc.kill()
    proc.wait()
    with pytest.raises(queue.Empty):
        heard.get(timeout=0.5)


def test_a_pid_with_another_start_time_is_not_watched(
    running: tuple[ExitWatch, queue.Queue[ProjectId | None]],
) -> None:
    watch, _heard = running
    proc, start = sleeper()
    try:
        assert not watch.watch(proc.pid, start + 1, ProjectId("web")), "a reused pid"
        assert not watch.alive(proc.pid, start + 1)
    finally:
        proc.kill()
        proc.wait()
    gone, gone_start = sleeper()
    gone.kill()
    gone.wait()
    assert not watch.watch(gone.pid, gone_start, ProjectId("web")), "exited already"


def test_without_a_watcher_nothing_is_taken_as_alive() -> None:
    """A watch nobody listens to would never hear the exit: then callers ask /proc."""
    watch = ExitWatch(process_start_time)
    proc, start = sleeper()
    try:
        watch.watch(proc.pid, start, ProjectId("web"))
        assert not watch.alive(proc.pid, start)
    finally:
        proc.kill()
        proc.wait()
        watch.close()
