from __future__ import annotations

import socket
from pathlib import Path

import pytest

from reconciler.core.config import PortRange
from reconciler.core.errors import TransientError
from reconciler.stores.ports import PortAllocator, port_is_free
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
