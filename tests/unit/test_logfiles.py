"""Log rotation by size: copy and truncate, a bounded number of old files, no symlinks."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.core.logfiles import LogLimits, rotate, rotated
from reconciler.runtimes.base import OutputTail

SMALL = LogLimits(max_bytes=100, keep=2)


def test_rotate_copies_truncates_and_keeps_a_bounded_number(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    writer = open(log, "a")  # noqa: SIM115 - a process that keeps writing, like an app
    try:
        for round_ in range(4):
            writer.write(f"round {round_}\n" * 20)
            writer.flush()
            assert rotate(log, SMALL)
            assert log.stat().st_size == 0
        writer.write("after\n")
        writer.flush()
    finally:
        writer.close()
    assert log.read_text() == "after\n", "the writer goes on at the start of the emptied file"
    assert rotated(log, SMALL) == [tmp_path / "app.log.1", tmp_path / "app.log.2"]
    assert (tmp_path / "app.log.1").read_text() == "round 3\n" * 20
    assert (tmp_path / "app.log.2").read_text() == "round 2\n" * 20
    assert not (tmp_path / "app.log.3").exists()
    assert not rotate(log, SMALL), "under the limit: nothing to do"


def test_rotate_never_follows_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("x" * 1000)
    os.symlink(target, tmp_path / "app.log")
    assert not rotate(tmp_path / "app.log", SMALL)
    assert target.read_text() == "x" * 1000


def test_a_build_log_is_rotated_as_it_is_written(tmp_path: Path) -> None:
    lines: list[str] = []
    with open(tmp_path / "build.log", "a", encoding="utf-8") as log:
        tail = OutputTail(lines.append, log, SMALL)
        for i in range(100):
            tail.add(f"compiling module {i}")
    assert len(lines) == 100 and tail.text().endswith("compiling module 99")
    assert (tmp_path / "build.log").stat().st_size <= SMALL.max_bytes + 30
    assert (tmp_path / "build.log.1").is_file() and (tmp_path / "build.log.2").is_file()
    assert not (tmp_path / "build.log.3").exists()
    assert "compiling module 99" in (tmp_path / "build.log").read_text()


def test_docker_log_options_follow_the_same_limits() -> None:
    assert SMALL.docker() == {"max-size": "100", "max-file": "2"}
