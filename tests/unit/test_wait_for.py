"""The tests' one way to wait: a predicate's bug surfaces as itself, a timeout names its cause."""

from __future__ import annotations

import time

import pytest

from tests.integration.harness import wait_for


def test_a_bug_in_the_predicate_is_raised_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(TypeError, match="unsupported operand"):
        wait_for(lambda: None + 1, timeout=5)  # type: ignore[operator]
    assert time.monotonic() - started < 1


def test_not_yet_is_retried_and_a_timeout_carries_the_last_cause() -> None:
    rows: list[str] = []
    assert wait_for(lambda: rows.append("x") or (len(rows) > 3 and rows), timeout=5) == ["x"] * 4
    with pytest.raises(AssertionError, match=r"timed out after 0\.1s") as info:
        wait_for(lambda: {}["missing"], timeout=0.1, what="a row")
    assert isinstance(info.value.__cause__, KeyError)
