"""``Rotation`` walks sorted keys a slice at a time; ``Credit`` adds fractional shares up."""

from __future__ import annotations

from reconciler.core.rotation import Credit, Rotation


def test_a_rotation_takes_the_next_slice_and_wraps() -> None:
    keys = ["a", "b", "c", "d", "e"]
    rotation = Rotation()
    assert rotation.take(keys, 2) == ["a", "b"] and not rotation.wrapped
    assert rotation.take(keys, 2) == ["c", "d"] and not rotation.wrapped
    assert rotation.take(keys, 2) == ["e", "a"] and rotation.wrapped
    assert rotation.take(keys, 2) == ["b", "c"]


def test_a_rotation_goes_on_after_the_last_key_when_keys_come_and_go() -> None:
    rotation = Rotation()
    assert rotation.take(["a", "b", "c", "d"], 2) == ["a", "b"]
    assert rotation.take(["a", "c", "d", "e"], 2) == ["c", "d"], "b went: go on after it"
    assert rotation.take(["a", "c", "d", "e"], 9) == ["a", "c", "d", "e"]
    assert rotation.wrapped
    assert rotation.take([], 3) == [] and rotation.take(["a"], 0) == []


def test_credit_gives_whole_counts_that_add_up_and_never_burst() -> None:
    credit = Credit()
    assert [credit.add(0.4) for _ in range(5)] == [0, 0, 1, 0, 1]
    assert [credit.add(2.5), credit.add(2.5)] == [2, 3]
    for _ in range(100):
        credit.add(0.0)
    assert credit.add(0.5) <= 1, "a long pause does not save up a burst"
