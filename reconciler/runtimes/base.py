"""The runtime protocol: what builds and runs a release.

Two implementations share it: ``process`` (local processes, the embedded default) and
``docker`` (the docker SDK against a real engine). The controller uses them interchangeably:
what differs between them (where a build's output sits in the source, whether the engine
reports deaths by itself) is said through this protocol, never by asking which one it is.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import httpx

from reconciler.core.errors import Cancelled, StartFailed
from reconciler.core.kinds import RuntimeName
from reconciler.core.logfiles import DEFAULT_LIMITS, LogLimits, rotate
from reconciler.core.spec import Health, ProjectId, ProjectSpec
from reconciler.stores.releases import Release

FIRST_PROBE_DELAY = 0.005
# a path that keeps answering 4xx this long is the wrong path, not an app still starting
WRONG_PATH_GRACE = 10.0
# an app listening only on other ports this long does not use the port it was given
WRONG_PORT_GRACE = 5.0
PROBE_GROWTH = 1.2
STARTUP_PROBE_CAP = 0.02  # while an app starts, readiness is seen within this of it
STARTUP_PROBING = 30.0  # after this long, probes slow down to ``health.interval``
LineSink = Callable[[str], None]
OnChange = Callable[[ProjectId | None], None]
TAIL_LINES = 20


@dataclass(frozen=True)
class BuildRequest:
    project_id: ProjectId
    spec: ProjectSpec
    source: Path
    log_dir: Path
    work_dir: Path
    cancel: threading.Event
    on_line: LineSink = lambda _line: None
    log_limits: LogLimits = DEFAULT_LIMITS
    cache_dir: Path | None = None  # the project's package caches, kept from build to build


@dataclass(frozen=True)
class BuildResult:
    """A built dist, ready to be hashed and staged. ``details`` go into the manifest.

    ``dist_exclude``: top-level names under ``dist`` that the release leaves out (``.git``
    when the build output is the source dir itself). ``identity``: what runs besides the
    dist (an image runtime's image id), so a new image with the same files is a new version.
    """

    dist: Path
    details: dict[str, Any] = field(default_factory=dict)
    dist_exclude: tuple[str, ...] = ()
    identity: str | None = None  # what runs besides dist (an image id): part of the version
    runs_app: bool = False  # never served as files: links that leave it are kept as links
    request: BuildRequest | None = None  # what was built (for finish_build)


@dataclass(frozen=True)
class Instance:
    """One running (or once-running) instance: a release run with some settings (``config``,
    see ``ProjectSpec.instance_config``; None for one started before instances had it)."""

    project_id: ProjectId
    hash: str
    runtime: RuntimeName
    port: int | None
    started_at: str
    pid: int | None = None
    pid_start: int | None = None
    container_id: str | None = None
    config: str | None = None
    asleep: bool = False  # a service scaled to 0 while its site sleeps

    @property
    def key(self) -> str:
        """Unique among the project's instances: the version, and the settings it runs with."""
        return instance_key(self.hash, self.config)


PREVIEW_CONFIG = "preview"  # the settings name of an instance a preview of a kept version runs


def instance_key(version: str, config: str | None) -> str:
    return version if config is None else f"{version}-{config}"


@dataclass(frozen=True)
class Usage:
    memory: int | None  # bytes
    cpu: float | None  # percent of one core since the previous sample (None: first sample)


class CpuMeter:
    """CPU percent of one core between two samples of a cumulative CPU time, per key."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def percent(self, key: str, cpu_seconds: float) -> float | None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            self._last[key] = (now, cpu_seconds)
        if last is None or now <= last[0]:
            return None
        return round(max(0.0, (cpu_seconds - last[1]) / (now - last[0]) * 100), 1)


class Runtime(Protocol):
    name: RuntimeName

    def build(self, request: BuildRequest) -> BuildResult:
        """Produce a dist. Raises BuildFailed, TransientError or Cancelled."""

    def finish_build(self, result: BuildResult, release: Release) -> None:
        """Called once the dist was staged as ``release`` (docker: tag the image)."""

    def start(self, release: Release, spec: ProjectSpec, *, port: int, config: str) -> Instance:
        """Start ``release`` serving on ``port`` with the settings ``config`` names (from
        ``spec``). Raises StartFailed or TransientError."""

    def stop(self, instance: Instance, *, timeout: float = 10) -> None:
        """Stop gracefully, then forcibly; a no-op for an instance that is gone."""

    def alive(self, instance: Instance) -> bool: ...

    def observe(self, project_id: ProjectId) -> list[Instance]:
        """Every instance of the project that really runs, adopted ones included."""

    def describe_exit(self, instance: Instance) -> str:
        """A short account of why a dead instance died (exit code, last log lines)."""

    def remove_version(self, project_id: ProjectId, version: str) -> None:
        """Free what a pruned version holds outside the release dir (docker: its image)."""

    def usage(self, instance: Instance) -> Usage | None:
        """What the instance uses now, where the runtime can tell (None: it cannot)."""

    def exits(self, project_id: ProjectId) -> list[str]:
        """Why the project's instances ended by themselves since last asked, each once, when
        the engine tells (docker: killed for memory, then restarted by the engine)."""

    def watch(self, changed: OnChange, stop: threading.Event) -> None:
        """Report instances that change outside the daemon's hands, until ``stop`` is set:
        ``changed(project)`` for one, ``changed(None)`` to re-check every project. A runtime
        whose engine reports nothing returns at once (the health poll covers it)."""

    def close(self) -> None:
        """Release connections to the engine; instances keep running."""


@runtime_checkable
class Ports(Protocol):
    """A runtime that can see which ports an instance's app listens on."""

    def wrong_port(self, instance: Instance) -> str | None:
        """What to fix when the app listens, but not on the port it was given (None: it
        listens on it, on nothing yet, or this cannot be seen)."""
        ...

    def foreign(self, instance: Instance) -> str | None:
        """Who holds the instance's port when it is not the instance (its health check was
        answered by another process); None when it is, or this cannot be seen."""
        ...


@runtime_checkable
class Leftovers(Protocol):
    """A runtime whose work can outlive a daemon that was killed: what it left is stopped at
    startup, builds before anything else, stray instances once adoption has recorded what
    the records name."""

    def stop_leftover_builds(self) -> list[str]: ...

    def stop_strays(self) -> list[str]: ...


@dataclass(frozen=True)
class ServiceTasks:
    upstreams: tuple[str, ...]  # host:port of each task that runs
    running: int
    wanted: int
    down: tuple[str, ...] = ()  # "name (address)" of each node gone down under its tasks

    @property
    def replicas(self) -> str:
        return f"{self.running}/{self.wanted}"


@runtime_checkable
class ServiceRuntime(Runtime, Protocol):
    """A runtime that runs each project as one replicated service its engine rolls from
    version to version (swarm): ``start`` creates or updates the service and returns at
    once; ``rollout`` watches the engine do the rest; the edge routes to ``upstreams``."""

    def rollout(
        self,
        instance: Instance,
        spec: ProjectSpec,
        *,
        cancel: threading.Event,
        progress: Callable[[str], None],
        tasks_changed: Callable[[tuple[str, ...]], None],
    ) -> None:
        """Until every task runs ``instance`` healthy. Raises StartFailed or Cancelled."""

    def tasks(self, project_id: ProjectId) -> ServiceTasks | None:
        """The service's running tasks (one read); None when the project has no service."""

    def sleep(self, instance: Instance) -> None:
        """Scale the service to 0 while its site sleeps (``start`` scales it up again)."""


# ---------------------------------------------------------------------------------------------
# Helpers shared by the runtimes


class OutputTail:
    """Keep the last lines of a build's output for error messages, and forward each line;
    the log file is rotated by ``limits`` as it grows."""

    def __init__(
        self, sink: LineSink, log: IO[str] | None, limits: LogLimits | None = None
    ) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.sink = sink
        self.log = log
        self.limits = limits or DEFAULT_LIMITS

    def add(self, text: str) -> None:
        for line in text.splitlines():
            line = line.rstrip()
            if not line:
                continue
            self.lines.append(line)
            if self.log is not None:
                self.log.write(line + "\n")
                self.log.flush()
                if self.log.tell() > self.limits.max_bytes:
                    rotate(Path(self.log.name), self.limits)
            with contextlib.suppress(Exception):
                self.sink(line)

    def text(self) -> str:
        return "\n".join(self.lines)


def tail_file(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def describe_seconds(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    value = int(seconds) if float(seconds).is_integer() else seconds
    return f"{value} second{'s' if value != 1 else ''}"


def with_tail(message: str, tail: str) -> str:
    return f"{message}\n{tail}" if tail else message


def loopback_client(timeout: float = 5.0) -> httpx.Client:
    """A client for plain-HTTP probes of our own listeners: no TLS context to build (that
    costs ~40 ms per client) and no proxy from the environment."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=2.0),
        follow_redirects=False,
        verify=False,  # noqa: S501 - plain HTTP to 127.0.0.1 only
        trust_env=False,
    )


class PortCheck:
    """While probes get no answer, ask (at most once a second) whether the app listens on
    other ports than its own; the same answer for WRONG_PORT_GRACE fails the start."""

    def __init__(self, wrong_port: Callable[[], str | None], clock: Clock) -> None:
        self.wrong_port = wrong_port
        self.clock = clock
        # first asked a second in (an app binds its port within it: no scan of /proc then)
        self.asked = clock.monotonic()
        self.since: float | None = None

    def unanswered(self) -> None:
        now = self.clock.monotonic()
        if now - self.asked < 1.0:
            return
        self.asked = now
        try:
            fix = self.wrong_port()
        except Exception:  # a process gone mid-scan: ask again next time
            fix = None
        if fix is None:
            self.since = None
            return
        self.since = now if self.since is None else self.since
        if now - self.since >= WRONG_PORT_GRACE:
            raise StartFailed(f"Start failed: {fix}")


@dataclass
class Clock:
    """Injected time, so tests can run the probe schedule without sleeping."""

    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def wait_ready(
    url: str,
    health: Health,
    *,
    alive: Callable[[], bool],
    why_dead: Callable[[], str],
    cancel: threading.Event | None = None,
    clock: Clock | None = None,
    client: httpx.Client | None = None,
    wrong_port: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll ``GET url`` until it answers 2xx.

    The first probe goes out at once; later ones follow after 5 ms, growing by a fifth each time
    up to 20 ms, so an app is seen ready within 20 ms of its first answer (a refused connect on
    loopback costs microseconds); after 30 s the gap grows on to ``health.interval``, so an app
    that takes minutes is not polled hard. Raises StartFailed after ``health.timeout`` or as
    soon as the instance dies, Cancelled if ``cancel`` is set.
    """
    clock = clock or Clock()
    own = client is None
    http = client or loopback_client()
    started = clock.monotonic()
    deadline = started + health.timeout
    delay = FIRST_PROBE_DELAY
    last = "no answer yet"
    client_error_since: float | None = None  # answering 4xx since then
    port_check = PortCheck(wrong_port, clock)
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled("health check cancelled")
            refused_since = client_error_since
            client_error_since = None
            try:
                response = http.get(url)
                if 200 <= response.status_code < 300:
                    return
                last = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    client_error_since = (
                        refused_since if refused_since is not None else clock.monotonic()
                    )
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                port_check.unanswered()
            if not alive():
                raise StartFailed(why_dead())
            if (
                client_error_since is not None
                and clock.monotonic() - client_error_since >= WRONG_PATH_GRACE
            ):
                raise StartFailed(
                    f"Start failed: GET {url} answered {last} for "
                    f"{describe_seconds(WRONG_PATH_GRACE)} (last: {last}): the app runs, but "
                    f"is health.path right? It is {health.path!r}; it must answer 2xx"
                )
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                raise StartFailed(
                    f"Health check timeout after {describe_seconds(health.timeout)}: "
                    f"GET {url} never answered 2xx (last: {last})"
                )
            step = min(delay, remaining)
            if cancel is not None:
                if cancel.wait(step):
                    raise Cancelled("health check cancelled")
            else:
                clock.sleep(step)
            fast = clock.monotonic() - started < STARTUP_PROBING
            cap = min(STARTUP_PROBE_CAP, health.interval) if fast else health.interval
            delay = min(delay * PROBE_GROWTH, cap)
    finally:
        if own:
            http.close()
