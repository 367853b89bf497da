"""The keyed delaying queue, its rate limiters, and the workers that serve it: one queue for
every part that does work per key later or again (the controller's reconciles, the
follower's source checks, the drainer's stops).

The queue holds keys (project ids, instance keys), never events: a key added while it waits
is not added twice, and a key added while a worker handles it is handed out once more
afterwards, to one worker at a time. A key waits for one time only: the earliest it was
added for (``add(k, 1); add(k, 2)`` hands ``k`` out once, after 1 s; ``add(k)`` now
supersedes any wait), as client-go's delaying queue does, unless it is ``routine`` (a safety
net's check): that never cuts a wait short, so a retry's backoff holds against the periodic
resyncs. ``discard`` drops a waiting key.

A worker's handler returns a typed :data:`Result`:

::

    Done()                   converged (or nothing to do): forget the key's failures
    RequeueAfter(seconds)    come back after exactly this delay (e.g. after a cancel)
    Retry(reason, at_least)  a transient failure: back off per key (1 s, 2 s, 4 s ... 60 s),
                             never sooner than ``at_least``
    Permanent(reason)        recorded and not retried until something enqueues the key again

A handler that raises is treated as ``Retry``: the loop never dies of one project's fault.
A retry waits for the longer of the key's backoff and, when there is one, the overall
bucket's next token (``Bucket``: a bound on retries per second across all keys).
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar, assert_never

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
K = TypeVar("K", bound=Hashable)
IDLE_WAIT = 5.0


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class RequeueAfter:
    seconds: float


@dataclass(frozen=True)
class Retry:
    reason: str
    at_least: float = 0.0


@dataclass(frozen=True)
class Permanent:
    reason: str


Result = Done | RequeueAfter | Retry | Permanent


class Bucket:
    """A token bucket over all keys: ``rate`` tokens a second, ``burst`` at most."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; the seconds until it is there (0: now)."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateLimiter:
    """Per-key exponential backoff: ``base * 2**(failures-1)``, capped; reset by ``forget``;
    never sooner than the overall bucket allows, when there is one."""

    def __init__(
        self, *, base: float = 1.0, cap: float = 60.0, overall: Bucket | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.overall = overall
        self._failures: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def when(self, key: Hashable) -> float:
        with self._lock:
            count = self._failures.get(key, 0) + 1
            self._failures[key] = count
        backoff = float(min(self.cap, self.base * 2 ** (count - 1)))
        return max(backoff, self.overall.reserve()) if self.overall is not None else backoff

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def failures(self, key: Hashable) -> int:
        with self._lock:
            return self._failures.get(key, 0)


class WorkQueue(Generic[K]):
    """De-duplicated keys, one worker per key at a time, one wait per key (the earliest)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: collections.deque[K] = collections.deque()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._waiting: dict[K, float] = {}  # key -> when it comes due (the earliest asked)
        self._delayed: list[tuple[float, int, K]] = []  # may hold stale entries
        self._seq = 0
        self._closed = False

    def add(self, key: K, delay: float = 0.0, *, routine: bool = False) -> None:
        with self._cond:
            if self._closed or (routine and key in self._waiting):
                return
            if delay > 0:
                due = self._clock() + delay
                if key in self._waiting and self._waiting[key] <= due:
                    return
                self._waiting[key] = due
                self._seq += 1
                heapq.heappush(self._delayed, (due, self._seq, key))
            else:
                self._waiting.pop(key, None)
                self._add_now(key)
            self._cond.notify_all()

    def discard(self, key: K) -> None:
        """Drop the key's wait (a key ready or processing is left as it is)."""
        with self._cond:
            self._waiting.pop(key, None)

    def _add_now(self, key: K) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)

    def _due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            due, _seq, key = heapq.heappop(self._delayed)
            if self._waiting.get(key) == due:
                del self._waiting[key]
                self._add_now(key)

    def get(self, timeout: float | None = None) -> K | None:
        """The next ready key (now processing), or None on timeout or close."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                self._due(now)
                if self._ready:
                    key = self._ready.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                waits = [IDLE_WAIT]  # add() and close() notify; this only bounds a missed one
                if self._delayed:
                    waits.append(self._delayed[0][0] - now)
                if deadline is not None:
                    if now >= deadline:
                        return None
                    waits.append(deadline - now)
                self._cond.wait(max(0.001, min(waits)))
            return None

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_now(key)
                self._cond.notify_all()

    def depth(self) -> int:
        """Keys waiting (ready, delayed or re-added while processing)."""
        with self._cond:
            return len(self._ready) + len(self._waiting) + len(self._dirty)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Workers:
    """Threads that take keys from a queue, run the handler, and apply its Result.

    Also what a watchdog needs: which keys are busy past their time budget (``hung``), and how
    many times each key has been handled (``handled``).
    """

    def __init__(
        self,
        queue: WorkQueue[str],
        handler: Callable[[str], Result],
        *,
        count: int,
        budget: Callable[[str], float],
        limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.queue = queue
        self.handler = handler
        self.count = count
        self.budget = budget
        self.limiter = limiter or RateLimiter()
        self.clock = clock
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._busy: dict[str, tuple[float, float]] = {}  # key -> (started, budget)
        self._handled: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def start(self) -> None:
        for index in range(self.count):
            thread = threading.Thread(target=self._work, name=f"reconcile-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self.queue.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def handled(self, key: str) -> int:
        with self._lock:
            return self._handled[key]

    def hung(self) -> list[str]:
        """Keys whose handler outlived every timeout it could be waiting on."""
        now = self.clock()
        with self._lock:
            return [k for k, (start, budget) in self._busy.items() if now - start > budget]

    def _work(self) -> None:
        while not self._stopping.is_set():
            key = self.queue.get(timeout=IDLE_WAIT)
            if key is None:
                continue
            with self._lock:
                self._busy[key] = (self.clock(), self.budget(key))
            try:
                result = self.handler(key)
            except Exception as exc:
                logger.exception("%s: reconcile crashed", key)
                result = Retry(f"{type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._busy.pop(key, None)
                    self._handled[key] += 1
                self.queue.done(key)
            self.apply(key, result)

    def apply(self, key: str, result: Result) -> None:
        """Requeue ``key`` as ``result`` says."""
        match result:
            case Done() | Permanent():
                self.limiter.forget(key)
            case RequeueAfter(seconds=seconds):
                if not self._stopping.is_set():
                    self.queue.add(key, seconds)
            case Retry(at_least=at_least):
                delay = max(at_least, self.limiter.when(key))
                if not self._stopping.is_set():
                    self.queue.add(key, delay)
            case _:
                assert_never(result)
