from __future__ import annotations

import socket
from pathlib import Path

import pytest

from reconciler.core.config import PortRange
from reconciler.core.errors import TransientError
from reconciler.core.spec import ProjectId
from reconciler.stores.ports import PortAllocator, SiteAllocator, port_is_free
from reconciler.stores.state import StateDB
from tests.conftest import free_port


def test_port_range_parse() -> None:
    assert PortRange.parse("3001-3999") == PortRange(3001, 3999)
    for bad in ("3001", "a-b", "5-1", "0-10", "1-70000"):
        with pytest.raises(ValueError):
            PortRange.parse(bad)


def test_lowest_free_port_reserved_and_released(tmp_path: Path) -> None:
    base = free_port()
    db = StateDB(tmp_path / "state.db")
    ports = PortAllocator(db, PortRange(base, base + 20))
    first = ports.allocate("a")
    second = ports.allocate("b")
    assert first < second
    assert ports.reserved() == {first: "a", second: "b"}
    ports.release(first)
    assert ports.allocate("c") == first


def test_foreign_listener_is_skipped(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert not port_is_free("127.0.0.1", taken)
        db = StateDB(tmp_path / "state.db")
        ports = PortAllocator(db, PortRange(taken, taken + 50))
        got = ports.allocate("a")
        assert got != taken and got > taken


def test_exhausted_range_is_transient(tmp_path: Path) -> None:
    port = free_port()
    ports = PortAllocator(StateDB(tmp_path / "state.db"), PortRange(port, port))
    ports.allocate("a")
    with pytest.raises(TransientError, match="no free port"):
        ports.allocate("b")


def _sites(tmp_path: Path, public: PortRange, internal: PortRange) -> SiteAllocator:
    db = StateDB(tmp_path / "state.db")
    return SiteAllocator(db, public, internal, records=tmp_path / "records",
                         public_held=lambda: frozenset())  # fmt: skip


def test_site_ports_are_the_lowest_free_ones_and_never_given_twice(tmp_path: Path) -> None:
    base = free_port()
    sites = _sites(tmp_path, PortRange(40000, 40003), PortRange(base, base + 40))
    got = [sites.reserve(ProjectId(name)).publicPort for name in ("a", "b", "c")]
    assert got == [40000, 40001, 40002]
    sites.release(ProjectId("a"))  # freed through the allocator: the lowest again
    assert sites.reserve(ProjectId("d")).publicPort == 40000
    assert sites.reserve(ProjectId("e")).publicPort == 40003
    with sites.db.write() as conn:  # another process gave 40001 back, behind its back
        conn.execute("DELETE FROM sites WHERE project = 'b'")
    assert sites.reserve(ProjectId("f")).publicPort == 40001  # found when the scan wraps
    with pytest.raises(TransientError, match="no free port"):
        sites.reserve(ProjectId("g"))
    taken = {sites.db.site(ProjectId(n)).publicPort for n in "cdef"}  # type: ignore[union-attr]
    assert taken == {40000, 40001, 40002, 40003}


def test_slot_ports_skip_ports_held_by_rows_and_listeners(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        sites = _sites(tmp_path, PortRange(40000, 40010), PortRange(busy - 1, busy + 30))
        with sites.db.write() as conn:  # an instance of the plain allocator holds busy - 1
            conn.execute(
                "INSERT INTO ports (port, project, reservedAt) VALUES (?, 'x', 'now')", (busy - 1,)
            )
        first = sites.reserve_slots(ProjectId("a"))
        second = sites.reserve_slots(ProjectId("b"))
    assert busy - 1 not in first and busy not in first
    assert len({*first, *second}) == 4 and all(busy < p <= busy + 30 for p in {*first, *second})
