"""The debouncer's decisions by an injected clock, and the watcher on a real directory."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from reconciler.core.spec import ProjectId
from reconciler.sources.watch import Debouncer, DesiredWatcher, project_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def debouncer(clock: FakeClock) -> Debouncer[str]:
    return Debouncer(lambda _key: None, delay=0.1, max_wait=1.0, clock=clock)


def test_fires_delay_after_the_last_touch() -> None:
    clock = FakeClock()
    d = debouncer(clock)
    d.touch("a")
    clock.now += 0.05
    d.touch("a")
    assert d.due(clock.now + 0.099)[0] == []
    ready, _wait = d.due(clock.now + 0.1)
    assert ready == ["a"]
    assert d.due(clock.now + 10)[0] == [], "fired once"


def test_a_steady_burst_fires_by_max_wait() -> None:
    clock = FakeClock()
    d = debouncer(clock)
    first = clock.now
    fired_at = None
    for _ in range(30):  # a write every 62.5 ms (exact in binary) for ~1.9 s
        d.touch("a")
        clock.now += 0.0625
        if d.due(clock.now)[0]:
            fired_at = clock.now
            break
    assert fired_at is not None and fired_at - first == 1.0


def test_keys_are_independent_and_the_wait_is_the_next_due() -> None:
    clock = FakeClock()
    d = debouncer(clock)
    d.touch("a")
    clock.now += 0.06
    d.touch("b")
    ready, wait = d.due(clock.now)
    assert ready == [] and wait == pytest.approx(0.04)
    clock.now += 0.04
    ready, wait = d.due(clock.now)
    assert ready == ["a"] and wait == pytest.approx(0.06)


@pytest.mark.parametrize(
    ("name", "project"),
    [
        ("www.yaml", "www"),
        ("www.yml", "www"),
        (".www.yaml.tmp", None),
        ("www.yaml.swp", None),
        ("Bad Name.yaml", None),
        ("notes.txt", None),
        ("/abs/dir/site-2.yaml", "site-2"),
    ],
)
def test_project_for(name: str, project: str | None) -> None:
    assert project_for(name) == project


@pytest.mark.timeout(30)
def test_watcher_sees_renames_and_in_place_writes(tmp_path: Path) -> None:
    seen: list[ProjectId] = []
    changed = threading.Event()

    def notify(project: ProjectId) -> None:
        seen.append(project)
        changed.set()

    watcher = DesiredWatcher(tmp_path, notify, debounce=0.02, max_wait=0.2)
    watcher.start()
    try:
        tmp = tmp_path / ".www.yaml.tmp"
        tmp.write_text("source: x\n")
        os.replace(tmp, tmp_path / "www.yaml")  # an editor's or git's save
        assert changed.wait(5)
        changed.clear()
        (tmp_path / "api.yaml").write_text("source: y\n")  # an in-place write
        assert changed.wait(5)
        changed.clear()
        (tmp_path / "www.yaml").unlink()
        assert changed.wait(5)
    finally:
        watcher.stop()
    assert seen == ["www", "api", "www"]


def test_now_fires_at_once_and_folds_pending_touches() -> None:
    clock = FakeClock()
    d = debouncer(clock)
    d.touch("a")
    d.now("a")
    assert d.due(clock.now)[0] == ["a"]
    assert d.due(clock.now + 10)[0] == []


@pytest.mark.timeout(30)
def test_complete_writes_skip_the_debounce(tmp_path: Path) -> None:
    seen: list[tuple[ProjectId, float]] = []
    changed = threading.Event()

    def notify(project: ProjectId) -> None:
        seen.append((project, time.monotonic()))
        changed.set()

    watcher = DesiredWatcher(tmp_path, notify, debounce=3.0, max_wait=10.0)
    watcher.start()
    try:
        tmp = tmp_path / ".www.yaml.tmp"
        tmp.write_text("source: x\n")
        started = time.monotonic()
        os.replace(tmp, tmp_path / "www.yaml")
        assert changed.wait(2), "a rename into place is complete: no 3 s debounce"
        assert seen[0][1] - started < 1.0
        changed.clear()
        started = time.monotonic()
        with open(tmp_path / "www.yaml", "a") as fh:  # written in place, then closed
            fh.write("keep: 3\n")
        assert changed.wait(2)
        assert seen[-1][1] - started < 1.0
        changed.clear()
        started = time.monotonic()
        (tmp_path / "www.yaml").unlink()  # not a complete write: waits out the burst
        assert changed.wait(6)
        assert seen[-1][1] - started >= 2.5
    finally:
        watcher.stop()
