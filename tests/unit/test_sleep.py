"""What a site's idleness is judged from (the edge's access log, read as it grows and across
its rolls) and how the sleeper answers the requests that wait for a wake."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from reconciler.controller.sleep import Answer, Sleeper
from reconciler.core.kinds import ServeMode, Status
from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.edge.traffic import Traffic


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def line(port: int | None = None, host: str = "127.0.0.1:3001", **extra: object) -> str:
    entry: dict[str, object] = {"level": "info", "logger": "http.log.access",
                                "request": {"host": host, "headers": extra}}  # fmt: skip
    if port is not None:
        entry["port"] = port  # as Caddy writes it: a number
    return json.dumps(entry, separators=(",", ":")) + "\n"


def test_traffic_follows_the_log_and_its_rolls(tmp_path: Path) -> None:
    log, clock = tmp_path / "access.log", Clock()
    log.write_text(line(3001))  # before the daemon: not news
    traffic = Traffic(log, clock=clock)
    traffic.poll(force=True)
    assert traffic.last(3001) is None
    with log.open("a") as out:
        out.write(line(3002) + line(None, host="www.example.com"))
        out.write(line(3003, X=['"port":"3009"']))  # a header saying so is escaped: not a hit
        out.write(line(3004)[:20])  # half a line: read when it is whole
    clock.now = 1001
    traffic.poll(force=True)
    assert traffic.last(3002) == 1001 and traffic.last(None, ["www.example.com"]) == 1001
    assert traffic.last(3009) is None and traffic.last(3004) is None
    with log.open("a") as out:
        out.write(line(3004)[20:])
    os.rename(log, tmp_path / "access-1.log")  # Caddy rolls it: the rest, then the new one
    log.write_text(line(3005))
    clock.now = 1002
    traffic.poll(force=True)
    assert traffic.last(3004) == 1002 and traffic.last(3005) == 1002
    assert traffic.last(3002, ["www.example.com"]) == 1001
    traffic.close()
    with log.open("a") as out:  # a reconcile ending after the daemon closed it: no new file
        out.write(line(3006))
    assert traffic.poll(force=True) == 0 and traffic._file is None


def spec(after: str | None = "30s") -> ProjectSpec:
    return ProjectSpec.model_validate({"source": "s", "sleep": {"after": after}})


def make(tmp_path: Path, clock: Clock, queued: list[str], **options: object) -> Sleeper:
    log = tmp_path / "access.log"
    log.touch()
    values: dict[str, object] = {"default_after": 0.0, "wake_timeout": 5.0,
                                 "enqueue": queued.append, "clock": clock, **options}  # fmt: skip
    return Sleeper(Traffic(log, clock=clock), **values)  # type: ignore[arg-type]


def test_idle_is_time_without_a_request_since_it_last_woke(tmp_path: Path) -> None:
    clock, queued = Clock(), []  # type: list[str]
    sleeper = make(tmp_path, clock, queued)
    web = ProjectId("web")
    sleeper.note(web, spec(), ServeMode.DYNAMIC, 3001)
    sleeper.reconciled(web, Status.RUNNING, None)
    clock.now += 29
    assert not sleeper.idle(web) and sleeper.tick() == 0
    with (tmp_path / "access.log").open("a") as out:
        out.write(line(3001))
    assert sleeper.tick() == 0
    clock.now += 29
    assert not sleeper.idle(web), "a request 29 s ago"
    clock.now += 2
    assert sleeper.idle(web) and sleeper.tick() == 1 and queued == ["web"]
    sleeper.note(web, spec("off"), ServeMode.DYNAMIC, 3001)
    assert not sleeper.idle(web), "sleep turned off"
    sleeper.note(web, spec(None), ServeMode.STATIC, 3001)
    assert not sleeper.idle(web), "a static site never sleeps"
    sleeper.note(web, spec(None), ServeMode.DYNAMIC, 3001)
    assert not sleeper.idle(web), "no default either"
    sleeper.close()


def test_requests_for_a_sleeping_site_share_one_wake(tmp_path: Path) -> None:
    clock, queued = Clock(), []  # type: list[str]
    sleeper = make(tmp_path, clock, queued, default_after=60.0)
    web = ProjectId("web")
    sleeper.note(web, spec(None), ServeMode.DYNAMIC, 3001)
    sleeper.reconciled(web, Status.SLEEPING, None)
    assert not sleeper.woken(web)
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda: answers.append(sleeper.wake("port", "3001").status))
        for _ in range(5)
    ]
    for thread in threads:
        thread.start()
    while len(queued) < 5:
        threading.Event().wait(0.01)
    assert sleeper.woken(web)
    sleeper.reconciled(web, Status.SLEEPING, None)  # a sleep under way when they came
    assert answers == []
    sleeper.reconciled(web, Status.RUNNING, None)
    for thread in threads:
        thread.join()
    assert answers == [204] * 5 and not sleeper.woken(web)
    assert sleeper.wake("port", "4000").status == 204, "no site there: the routes answer"
    sleeper.close()


def test_a_failed_or_slow_wake_is_a_503_with_retry_after(tmp_path: Path) -> None:
    clock, queued = Clock(), []  # type: list[str]
    sleeper = make(tmp_path, clock, queued, default_after=60.0, wake_timeout=0.2)
    web = ProjectId("web")
    sleeper.note(web, spec(None), ServeMode.DYNAMIC, 3001)
    slow = sleeper.wake("port", "3001")
    assert slow.status == 503 and slow.retry_after == 5 and "did not answer" in slow.message
    result: list[Answer] = []
    thread = threading.Thread(target=lambda: result.append(sleeper.wake("port", "3001")))
    thread.start()
    while not sleeper.woken(web) or len(queued) < 2:
        threading.Event().wait(0.01)
    sleeper.reconciled(web, Status.FAILED, "Start failed: exited with code 1\nlogs...")
    thread.join()
    answer = result[0]
    assert answer.status == 503
    assert answer.message == ("the site could not be woken: Start failed: exited with code 1")
    sleeper.close()


def test_previews_past_their_cap_sleep_least_recently_asked_first(tmp_path: Path) -> None:
    clock, queued = Clock(), []  # type: list[str]
    families = {ProjectId(f"web--b{i}"): ("web", 2) for i in range(3)}
    sleeper = make(tmp_path, clock, queued, family=families.get)
    for index, project in enumerate(families):
        sleeper.note(project, spec("15m"), ServeMode.DYNAMIC, 3001 + index)
        sleeper.reconciled(project, Status.RUNNING, None)
        clock.now += 1  # b0 woke first, b2 last
    assert sleeper.tick() == 1 and queued == ["web--b0"], "3 awake, 2 may be"
    assert sleeper.idle(ProjectId("web--b0")) and not sleeper.idle(ProjectId("web--b1"))
    sleeper.reconciled(ProjectId("web--b0"), Status.SLEEPING, None)
    assert not sleeper.idle(ProjectId("web--b0"))
    assert sleeper.tick() == 0
    sleeper.close()
