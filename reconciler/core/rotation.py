"""Walking many keys a few at a time: what keeps a safety net's cost flat as projects grow.

A periodic check of every project (is its ``current`` where it should be, did its inputs
move, does the edge's route file still say what was written) costs a fixed amount per
project; done for all of them on every tick, an idle daemon with 10,000 projects spends
a third of a core on it. A ``Rotation`` takes the next ``count`` keys after the last ones
it took (in sorted order, wrapping), so each tick costs ``count`` checks and every key is
still visited once per ``len(keys) / count`` ticks. ``Credit`` turns a fractional share per
tick (a tenth of the projects, say) into whole counts that add up over the ticks.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


class Rotation:
    def __init__(self) -> None:
        self._after: str | None = None  # the last key taken
        self.wrapped = False  # the last take reached the last key (a round is done)

    def take(self, keys: Sequence[str], count: int) -> list[str]:
        """The next ``count`` of ``keys`` (sorted, no duplicates) after the last taken;
        all of them (from the start) when ``count`` covers them."""
        self.wrapped = False
        if count <= 0 or not keys:
            return []
        if count >= len(keys):
            self._after, self.wrapped = None, True
            return list(keys)
        start = bisect.bisect_right(keys, self._after) if self._after is not None else 0
        chosen = list(keys[start : start + count])
        self.wrapped = start + count >= len(keys)  # the slice reached the last key
        if len(chosen) < count:  # wrap around
            chosen += keys[: count - len(chosen)]
        self._after = chosen[-1]
        return chosen


class Credit:
    """Whole counts from a fractional share: ``add(2.5)`` twice gives 2, then 3. What is
    left over never exceeds one share and one more (a pause makes no burst)."""

    def __init__(self) -> None:
        self._credit = 0.0

    def add(self, share: float) -> int:
        share = max(share, 0.0)
        self._credit = min(self._credit + share, share + 1.0)
        whole = int(self._credit + 1e-9)  # ten tenths make one
        self._credit -= whole
        return whole
