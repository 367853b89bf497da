from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from reconciler.core.kinds import DeploymentKind, DeploymentState
from reconciler.core.spec import ProjectId
from reconciler.stores.state import MIGRATIONS, InstanceRow, StateDB
from tests.integration.harness import wait_for

P = ProjectId("site")


def test_schema_wal_and_migrations(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "data" / "state.db")
    assert db.schema_version == len(MIGRATIONS) == 13
    assert db.read("PRAGMA journal_mode")[0][0] == "wal"
    db.close()
    again = StateDB(tmp_path / "data" / "state.db")  # idempotent
    assert again.schema_version == 13
    again.close()
    conn = sqlite3.connect(tmp_path / "data" / "state.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this reconciler"):
        StateDB(tmp_path / "data" / "state.db")


def test_projects_columns(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    assert db.project(P) is None
    row = db.update_project(P)
    assert row.productionStatus == "stopped" and row.productionHash is None
    row = db.update_project(
        P,
        productionStatus="running",
        productionPort=3001,
        productionUrl="http://localhost:3001",
        productionHash="a1b2c3d4",
        observedGeneration=3,
    )
    assert (row.productionStatus, row.productionPort, row.observedGeneration) == (
        "running",
        3001,
        3,
    )
    assert row.updatedAt.endswith("Z")
    with pytest.raises(ValueError, match="unknown project columns"):
        db.update_project(P, productionStatus="x", evil="1")
    assert [p.id for p in db.projects()] == ["site"]


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute(
        "INSERT INTO deployments (project, kind, generation, state, createdAt) "
        "VALUES ('site', 'deploy', 1, 'succeeded', '2025-01-01T00:00:00.000Z')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    db = StateDB(path)
    assert db.schema_version == len(MIGRATIONS)
    old = db.latest_deployment(P)
    assert old is not None and (old.kind, old.digest, old.error) == ("deploy", None, None)
    instance = db.instances(P)
    assert instance == [], "no instance rows in the old file; the v4 table replaced v1's"
    new = db.start_deployment(P, DeploymentKind.STOP, generation=None, digest="abc")
    db.finish_deployment(new, DeploymentState.FAILED, error="boom")
    row = db.deployment(new)
    assert row is not None and (row.digest, row.state, row.error) == ("abc", "failed", "boom")
    assert isinstance(row.kind, DeploymentKind) and isinstance(row.state, DeploymentState)
    db.close()


def test_jobs_and_active_job(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    assert db.active_job(P) is None
    build = db.create_job(P, "production.build", generation=2)
    active = db.active_job(P)
    assert active is not None and (active.id, active.type, active.state) == (
        build,
        "production.build",
        "running",
    )
    assert active.startedAt is not None and active.startedAt.endswith("Z")
    db.finish_job(build, "succeeded", hash="a1b2c3d4")
    assert db.active_job(P) is None
    assert db.jobs(P)[0].hash == "a1b2c3d4"
    db.create_job(P, "production.start", generation=2)
    assert db.interrupt_jobs() == 1
    job = db.jobs(P)[0]
    assert job.state == "cancelled" and "interrupted" in (job.error or "")
    with pytest.raises(ValueError):
        db.create_job(P, "production.explode", generation=1)


def test_events_and_retention(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    dep = db.start_deployment(P, "deploy", generation=1)
    ids = [
        db.append_event(P, "production.building", {"message": f"m{i}"}, deployment=dep)
        for i in range(10)
    ]
    other = db.append_event(ProjectId("other"), "production.building", {"message": "x"})
    assert ids == sorted(ids) and other > ids[-1]
    assert [e.id for e in db.events_after(P, ids[4])] == ids[5:]
    assert db.events_after(P, ids[0])[0].payload() == {"message": "m1"}
    assert [e.id for e in db.deployment_events(dep)] == ids
    assert db.latest_deployment(P).id == dep  # type: ignore[union-attr]
    db.prune(events_per_project=3)
    assert [e.id for e in db.events_after(P, 0)] == ids[-3:]
    new = db.append_event(P, "production.ready", {})
    assert new > other, "ids are never reused after retention"


def test_instances(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    inst = InstanceRow(
        P, "a1b2c3d4-0f0f0f0f", "a1b2c3d4", "0f0f0f0f", "process", 3001, 123, 456, None,
        "active", "2025-01-01T00:00:00.000Z",
    )  # fmt: skip
    db.put_instance(inst)
    assert db.instances(P) == [inst]
    db.put_instance(InstanceRow(**{**inst.__dict__, "role": "candidate"}))
    assert db.instances()[0].role == "candidate"
    other = InstanceRow(**{**inst.__dict__, "key": "a1b2c3d4-1e1e1e1e", "config": "1e1e1e1e"})
    db.put_instance(other)
    assert len(db.instances(P)) == 2, "one version, two settings: two instances"
    db.remove_instance(P, "a1b2c3d4-0f0f0f0f")
    assert db.instances() == [other]


def test_daemon_liveness_row(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    assert db.daemon() is None
    db.daemon_started("docker")
    row = db.daemon()
    assert row is not None and row.pid == os.getpid() and row.runtime == "docker"
    assert row.alive(time.time()) and not row.alive(time.time() + 11)
    db.daemon_pulse()
    assert db.daemon().pulse >= row.pulse  # type: ignore[union-attr]
    db.daemon_stopped()
    stopped = db.daemon()
    assert stopped is not None and stopped.stoppedAt is not None
    assert not stopped.alive(time.time())
    db.daemon_started("process")  # a restart clears the stop
    assert db.daemon().alive(time.time())  # type: ignore[union-attr]


def test_every_change_to_a_projects_rows_bumps_its_revision(tmp_path: Path) -> None:
    """The triggers of migration 6: a reader learns which projects changed since revision N
    from one query; a change to another project, or the daemon's pulse, bumps none of it."""
    db = StateDB(tmp_path / "state.db")

    def revs() -> dict[str, int]:
        return {r[0]: r[1] for r in db.read("SELECT project, rev FROM revisions")}

    db.update_project(P, productionStatus="running")
    first = revs()[P]
    db.update_project(ProjectId("other"))
    assert revs()[P] == first and revs()["other"] > first
    db.daemon_started("process")
    db.daemon_pulse()  # the daemon's own row: nobody's status
    assert max(revs().values()) == revs()["other"]
    before = revs()[P]
    deployment = db.start_deployment(P, DeploymentKind.DEPLOY, generation=1, digest="d")
    assert revs()[P] > before
    before = revs()[P]
    db.finish_deployment(deployment, DeploymentState.SUCCEEDED)
    assert revs()[P] > before


def test_the_bell_rings_on_a_commit_from_anywhere_and_misses_none(tmp_path: Path) -> None:
    """An event stream sleeps on the bell: a commit from another connection (another
    process, another thread) wakes it within milliseconds, and one made between ``seq()``
    and ``wait()`` returns at once; the bell's thread ends when nobody uses it."""
    import threading as _threading
    import time as _time

    from reconciler.stores.state.connection import ChangeBell

    db = StateDB(tmp_path / "state.db")
    bell = ChangeBell(db.path, linger=0.3)
    other = StateDB(tmp_path / "state.db")  # as the daemon's process would

    seen = bell.seq()
    other.update_project(P, productionStatus="running")  # between seq() and wait()
    started = _time.monotonic()
    assert bell.wait(seen, 5) != seen
    assert _time.monotonic() - started < 1

    seen = bell.seq()
    timer = _threading.Timer(0.2, lambda: other.update_project(P, productionHash="abcd1234"))
    timer.start()
    started = _time.monotonic()
    assert bell.wait(seen, 5) != seen
    assert 0.15 < _time.monotonic() - started < 1

    seen = bell.seq()
    started = _time.monotonic()
    assert bell.wait(seen, 0.3) == seen  # nothing committed: the timeout
    assert _time.monotonic() - started >= 0.29
    wait_for(lambda: bell._state == "stopped", 5, "the idle bell to stop")
    assert bell.thread is not None
    bell.thread.join(2)
    assert not bell.thread.is_alive()


def test_what_became_of_each_version_is_kept_and_older_ones_are_found(tmp_path: Path) -> None:
    """Migration 11 finds the versions that served in the events that said so; after it,
    a served version stays served, a failed start is kept with its reason."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[:10]:
        conn.executescript(statement)
    conn.execute("PRAGMA user_version = 10")
    conn.execute(
        "INSERT INTO events (project, type, data, createdAt) VALUES "
        "('site', 'production.ready', '{\"hash\": \"aaaaaaaa\"}', '2026-01-01T00:00:00Z'), "
        "('site', 'production.error', '{\"error\": \"x\"}', '2026-01-02T00:00:00Z')"
    )
    conn.commit()
    conn.close()
    db = StateDB(path)
    assert db.versions("site")["aaaaaaaa"].servedAt == "2026-01-01T00:00:00Z"
    db.version_failed("site", "bbbbbbbb", "health check failed: 500")
    db.version_failed("site", "aaaaaaaa", "a later crash")
    db.version_served("site", "aaaaaaaa")
    found = db.versions("site")
    assert found["aaaaaaaa"].servedAt == "2026-01-01T00:00:00Z"  # the first time is kept
    assert found["bbbbbbbb"].servedAt is None
    assert found["bbbbbbbb"].error == "health check failed: 500"
    db.forget_project(P)
    assert db.versions("site") == {}
    db.close()
