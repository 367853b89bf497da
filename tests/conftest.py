from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` different free ports: each is held until all are chosen (``free_port`` called
    in a row may hand out the same port twice, which the kernel reuses once it is closed)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def desired_dir(tmp_path: Path) -> Path:
    d = tmp_path / "desired"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def _no_leaked_children() -> Iterator[None]:
    """Fail a test that leaves a child process of the test runner behind."""
    before = _children()
    yield
    leaked = _children() - before
    # Give exiting children a moment to be reaped by their owners.
    if leaked:
        import time

        deadline = time.monotonic() + 3
        while leaked and time.monotonic() < deadline:
            time.sleep(0.05)
            leaked = {pid for pid in leaked if _alive_child(pid)}
    assert not leaked, f"test leaked child processes: {sorted(leaked)}"


def _children() -> set[int]:
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _alive_child(int(entry), parent=me):
            found.add(int(entry))
    return found


def _alive_child(pid: int, parent: int | None = None) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    state, ppid = fields[0], int(fields[1])
    if state == "Z":
        return False
    return ppid == (parent if parent is not None else os.getpid())
