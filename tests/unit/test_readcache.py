"""The API's read cache: a value per project, read again only when an input moved."""

from __future__ import annotations

import os
import time
from pathlib import Path

from reconciler.core.spec import ProjectId
from reconciler.readside.readcache import ReadCache
from reconciler.stores.state import StateDB
from tests.integration.harness import wait_for

A, B = ProjectId("alpha"), ProjectId("beta")


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.desired = tmp_path / "desired"
        self.desired.mkdir()
        self.db = StateDB(tmp_path / "state.db")
        self.reads: list[ProjectId] = []
        self.shared = "on"
        self.stale_at: float | None = None
        self.now = 0.0
        self.cache: ReadCache[str] = ReadCache(
            self.db, self.desired, self.compute, shared=lambda: self.shared,
            sweep_every=0.1, db_check_every=0, background=False, clock=lambda: self.now,
        )  # fmt: skip

    def compute(self, pid: ProjectId) -> tuple[str, float | None]:
        self.reads.append(pid)
        path = self.desired / f"{pid}.yaml"
        return (path.read_text() if path.exists() else "none"), self.stale_at

    def write(self, pid: ProjectId, text: str) -> None:
        tmp = self.desired / f".{pid}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.desired / f"{pid}.yaml")


def test_a_value_is_read_once_until_its_rows_or_file_change(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.write(A, "a1")
    s.write(B, "b1")
    assert s.cache.get(A) == "a1" and s.cache.get(A) == "a1"
    assert s.reads == [A]
    s.db.update_project(B, productionStatus="running")  # another project's rows
    assert s.cache.get(A) == "a1" and s.reads == [A]
    s.db.update_project(A, productionStatus="running")  # its own
    assert s.cache.get(A) == "a1" and s.reads == [A, A]
    with open(s.desired / "alpha.yaml", "w") as fh:  # in place: same inode
        fh.write("a2 longer")
    assert s.cache.get(A) == "a2 longer" and s.reads == [A, A, A]
    s.shared = "off"  # the edge mode or default runtime (rows too): every value
    s.db.daemon_started("docker")
    assert s.cache.get(A) == "a2 longer" and len(s.reads) == 4


def test_the_listing_sees_new_files_at_once_and_in_place_edits_at_the_next_sweep(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path)
    s.write(A, "a1")
    (s.desired / "Bad Name.yaml").write_text("x")
    (s.desired / "notes.txt").write_text("x")
    listing = s.cache.all()
    values, orphans = listing.projects, listing.orphans
    assert values == [(A, "a1")]
    assert [name for name, _why in orphans] == ["Bad Name.yaml"]
    s.write(B, "b1")  # a new file: the dir changed
    assert s.cache.all().projects == [(A, "a1"), (B, "b1")]
    reads = len(s.reads)
    for _ in range(5):
        assert s.cache.all() is s.cache.all()
    assert len(s.reads) == reads, "an unchanged listing reads nothing"
    version = s.cache.version
    with open(s.desired / "alpha.yaml", "w") as fh:  # in place: the dir did not change
        fh.write("a2 edited")
    s.cache.sweep_files()  # what the sweeper thread does every second
    assert s.cache.all().projects == [(A, "a2 edited"), (B, "b1")]
    assert s.cache.version > version
    s.write(A, "a3, renamed over it")  # the same name: the sweep notices the new file
    s.cache.all()
    s.cache.sweep_files()
    assert s.cache.all().projects == [(A, "a3, renamed over it"), (B, "b1")]
    (s.desired / "beta.yaml").unlink()
    assert s.cache.all().projects == [(A, "a3, renamed over it")]


def test_the_sweeper_thread_drops_what_moved(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    cache: ReadCache[str] = ReadCache(s.db, s.desired, s.compute, sweep_every=0.05)
    s.write(A, "a1")
    assert cache.all().projects == [(A, "a1")]
    with open(s.desired / "alpha.yaml", "w") as fh:
        fh.write("a2 edited in place")
    wait_for(lambda: cache.all().projects == [(A, "a2 edited in place")], 5, "the edit seen")


def test_a_file_that_has_yet_to_settle_is_read_again_when_it_does(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.write(A, "a1")
    s.stale_at = time.time() + 0.2
    s.cache.get(A)
    s.stale_at = None
    s.cache.get(A)
    assert s.reads == [A]
    time.sleep(0.25)
    s.cache.get(A)
    s.cache.get(A)
    assert s.reads == [A, A]


def test_forget_and_a_new_database_drop_values(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.write(A, "a1")
    for _ in range(3):
        s.db.update_project(A, productionStatus="running")
    s.cache.get(A)
    s.cache.forget(A)
    s.cache.get(A)
    assert s.reads == [A, A]
    s.db.close()
    (tmp_path / "state.db").unlink()  # lost: the daemon rebuilds it, revisions start over
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"state.db{suffix}").unlink(missing_ok=True)
    s.db = s.cache.db = StateDB(tmp_path / "state.db")
    s.cache.get(A)
    assert s.reads == [A, A, A]
