"""Processes on this host: sessions and their members, start times (never a reused pid), limits
without systemd, spawning detached, and what a previous daemon left (orphan builds and
instances)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from reconciler.core.errors import BuildFailed
from reconciler.core.kinds import RuntimeName
from reconciler.core.spec import Limits, ProjectSpec
from reconciler.runtimes.base import Instance
from reconciler.runtimes.sockets import listens_on, ports_of
from reconciler.stores.ports import holder
from reconciler.stores.releases import ReleaseStore

logger = logging.getLogger(__name__)


INSTANCE_FILE = "instance.json"  # an instance started before instances named their config


def instance_file(config: str | None) -> str:
    """The record of one instance, in its release's ``logs/`` (one per config)."""
    return INSTANCE_FILE if config is None else f"instance-{config}.json"


KILL_GRACE = 0.5


BUILD_RECORD = ".build.json"  # the running build of a project: pid and start time


INSTANCE_MARK = "RECONCILER_INSTANCE"  # in every instance's environment: whose it is
BUILD_MARK = "RECONCILER_BUILD"  # in every build's environment: ``<data dir digest>:<id>``


def instance_mark(releases: ReleaseStore, project_id: str, version: str, config: str) -> str:
    """``<data dir digest>:<id>:<hash>:<config>``: ties a process to this data dir's
    instances even when the daemon died before it wrote the instance's record."""
    return f"{_store_tag(releases)}:{project_id}:{version}:{config}"


def _store_tag(releases: ReleaseStore) -> str:
    return hashlib.sha256(os.fsencode(os.path.realpath(releases.root))).hexdigest()[:8]


# /proc/<pid>/stat, the fields after the command name: state is 0, then man 5 proc's order
STAT_SESSION, STAT_START = 3, 19


def live_processes() -> Iterator[tuple[int, list[bytes]]]:
    """Every process that has not exited, as (pid, its stat fields after the command name)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in (b"Z", b"X"):
            yield int(entry.name), fields


def marked_processes(
    prefix: bytes, *, skip: frozenset[int] = frozenset()
) -> Iterator[tuple[int, list[bytes], bytes]]:
    """Live processes whose environment holds a ``prefix``ed entry (``NAME=<store tag>:``), as
    (pid, stat fields, that entry); those in a session of ``skip`` are not read."""
    for pid, fields in live_processes():
        if int(fields[STAT_SESSION]) in skip:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        mark = next((v for v in environ.split(b"\0") if v.startswith(prefix)), None)
        if mark is not None:
            yield pid, fields, mark


def kill_orphan_builds(releases: ReleaseStore) -> list[str]:
    """At startup: stop builds a killed daemon left running (and everything they started),
    so two builds of one project never run in one source dir. Returns the projects."""
    stopped: list[str] = []
    if not releases.root.is_dir():
        return stopped
    for project in sorted(releases.root.iterdir()):
        record = project / BUILD_RECORD
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        pid, start = data.get("pid"), data.get("pidStart")
        if isinstance(pid, int) and isinstance(start, int) and kill_session(pid, start, timeout=2):
            stopped.append(project.name)
        record.unlink(missing_ok=True)
    # a daemon killed between starting a build and writing its record: found by its mark
    prefix = f"{BUILD_MARK}={_store_tag(releases)}:".encode()
    for _pid, fields, mark in marked_processes(prefix):
        sid = int(fields[STAT_SESSION])  # the build's own session: its leader, if still there
        start = process_start_time(sid) or int(fields[STAT_START])
        if kill_session(sid, start, timeout=2):
            stopped.append(mark[len(prefix) :].decode(errors="replace"))
    return sorted(set(stopped))


def build_mark(releases: ReleaseStore, project_id: str) -> str:
    return f"{_store_tag(releases)}:{project_id}"


# The daemon's own settings and systemd's protocol variables never reach builds or sites.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
               "LISTEN_FDNAMES", "INVOCATION_ID", "RECONCILER_")  # fmt: skip


def base_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_ENV)}


def site_instance(project_id: str, version: str, config: str | None) -> str:
    """The instance name of a site unit, ``reconciler-site@<16 hex>.service``: a digest of
    the project, version and config, short enough that the unit's user name
    (``reconciler-<instance>``) is a valid one (31 characters at most). The unit's
    description names the project, version and config."""
    key = f"{project_id}:{version}:{config or 'default'}".encode()
    return hashlib.sha256(key).hexdigest()[:16]


def build_instance(project_id: str) -> str:
    """The instance name of a project's build unit, ``reconciler-build@<16 hex>.service``
    (one build of a project runs at a time; its user is ``reconciler-b-<instance>``)."""
    return hashlib.sha256(f"build:{project_id}".encode()).hexdigest()[:16]


Launcher = Callable[[Sequence[str], Path, dict[str, str], Path, str, Limits], int]


NICE = 10  # a cpu limit without systemd or Docker: a lower priority, not a quota


def limited(argv: Sequence[str], limits: Limits) -> list[str]:
    """``argv`` under ``limits`` with what an unprivileged process has (no systemd, no
    Docker): ``prlimit`` caps the address space (memory) and the user's processes (pids;
    counted for the whole user, not the site, and not enforced for root), ``nice`` lowers
    the priority for any cpu limit. Weaker than cgroups: documented as such."""
    prefix: list[str] = []
    options = []
    if limits.memory is not None:
        options.append(f"--as={limits.memory}")
    if limits.pids is not None:
        options.append(f"--nproc={limits.pids}")
    prlimit, nice = shutil.which("prlimit"), shutil.which("nice")
    if options and prlimit is not None:
        prefix += [prlimit, *options, "--"]
    if limits.cpu is not None and limits.cpu < (os.cpu_count() or 1) and nice is not None:
        prefix += [nice, "-n", str(NICE)]
    return [*prefix, *argv]


def process_start_time(pid: int, *, zombie: bool = False) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot); None if gone or (unless
    ``zombie``) exited and not yet reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[1].split()
    if fields[0] == b"X" or (fields[0] == b"Z" and not zombie):
        return None
    return int(fields[STAT_START])


def pid_alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and process_start_time(pid) == start


def session_members(sid: int, start: int | None) -> list[int]:
    """Live processes of the session an instance's leader (pid ``sid``, started at ``start``)
    made, the leader included: what an instance is, even after its leader exited (a start
    command that forks and exits). A session whose id was reused by a newer leader is not
    ours and yields nothing; members must have started no earlier than our leader."""
    if start is None:
        return []
    leader = process_start_time(sid)
    if leader is not None and leader != start:
        return []  # the pid (and so the session id) belongs to someone else now
    return [
        pid
        for pid, fields in live_processes()
        if int(fields[STAT_SESSION]) == sid and int(fields[STAT_START]) >= start
    ]


def kill_session(sid: int, start: int | None, *, timeout: float) -> list[int]:
    """SIGTERM every member of the session, wait up to ``timeout``, SIGKILL what is left.
    Returns the members it found."""
    found = session_members(sid, start)
    if not found:
        return found  # nothing left (each look is a scan of /proc: one is enough)
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while found and time.monotonic() < deadline:
        _reaper.poll(sid)
        if not session_members(sid, start):
            return found
        time.sleep(0.05)
    for pid in session_members(sid, start):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found


def kill_group(pid: int, *, timeout: float, alive: Callable[[], bool]) -> None:
    """SIGTERM the process group, wait up to ``timeout``, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            break
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _output_dir(spec: ProjectSpec) -> str:
    """The build output under the source dir; ``.`` is the source dir itself (an app that
    runs from its source tree)."""
    output = spec.build_output(RuntimeName.PROCESS)
    pure = PurePosixPath(output)
    if pure.is_absolute() or ".." in pure.parts:
        raise BuildFailed(
            f"build.output {output!r} must be a relative path inside the source dir, no '..'"
        )
    return str(pure)


def _inside_source(source: Path, dist: Path, output: str) -> None:
    """Refuse a build output that leaves the source dir through a symlink (of it or of a
    parent): what is published must be what the source holds."""
    real_source = os.path.realpath(source)
    real_dist = os.path.realpath(dist)
    if real_dist != real_source and not real_dist.startswith(real_source + os.sep):
        raise BuildFailed(
            f"build.output {output!r} resolves to {real_dist}, outside the source dir "
            f"{real_source} (through a symlink); refusing to publish it"
        )


def _dist_exclude(output: str) -> tuple[str, ...]:
    """What a release leaves out of the build output: the repository's ``.git`` when the
    output is the whole source dir."""
    return (".git",) if output == "." else ()


def spawn_detached(
    argv: Sequence[str],
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    unit: str,
    limits: Limits = Limits(),  # noqa: B008 - frozen
) -> int:
    """Start a process in its own session with output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            limited(argv, limits),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _reaper.watch(proc)
    return proc.pid


class _Reaper:
    """Waits for the instances this process started, so they never linger as zombies.

    A question about one pid polls that child alone; the others are swept at most once a
    second (a health pass asks about every instance: polling every child for each of them
    made it quadratic)."""

    SWEEP_EVERY = 1.0

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._exit_codes: dict[int, int] = {}
        self._starts: dict[int, int] = {}
        self._swept = 0.0

    def watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Until it is watched nothing reaps ``proc``, so its start time is read here even
        when it has exited already (a start command that forks and exits at once): without
        it, what such a command left in its session could not be told apart from others'."""
        start = process_start_time(proc.pid, zombie=True)
        with self._lock:
            if start is not None:
                self._starts[proc.pid] = start
            self._procs[proc.pid] = proc

    def start_time(self, pid: int) -> int | None:
        """The start time recorded when ``pid`` was launched (None for other launchers)."""
        with self._lock:
            return self._starts.pop(pid, None)

    def poll(self, pid: int | None = None) -> None:
        """Reap ``pid`` if it is a child that ended; every child when ``pid`` is None or
        the last sweep is over a second old."""
        now = time.monotonic()
        with self._lock:
            if pid is None or now - self._swept >= self.SWEEP_EVERY:
                self._swept = now
                pids = list(self._procs)
            else:
                pids = [pid] if pid in self._procs else []
            for each in pids:
                code = self._procs[each].poll()
                if code is not None:
                    self._exit_codes[each] = code
                    del self._procs[each]

    def exit_code(self, pid: int) -> int | None:
        self.poll(pid)
        with self._lock:
            return self._exit_codes.get(pid)


_reaper = _Reaper()


def session_port_mismatch(sid: int | None, start: int | None, port: int | None) -> str | None:
    """What to fix when the processes of an instance's session listen, but not on ``port``
    (the one in its $PORT); None when they do, listen on nothing yet, or cannot be seen."""
    if sid is None or port is None:
        return None
    ports = ports_of(session_members(sid, start))
    if not ports or port in ports:
        return None
    return (
        f"the app listens on port {', '.join(map(str, sorted(ports)))} but not on {port}, "
        "the port in its $PORT; make it listen on $PORT (the start command gets it in its "
        "environment)"
    )


def instance_processes(releases: ReleaseStore, instance: Instance) -> list[int]:
    """Every live process of an instance: the members of the session its leader made, and
    any that left it (a double fork and ``setsid``, as daemonizing servers do) but carry its
    mark in their environment. What it started, wherever it went. One pass over /proc; only
    processes started after the instance's leader are looked at, and only those outside its
    session have their environment read."""
    sid, start = instance.pid, instance.pid_start
    if sid is None or start is None:
        return []
    leader = process_start_time(sid)
    ours = leader is None or leader == start  # a reused pid's session is someone else's
    mark = instance_mark(releases, instance.project_id, instance.hash, instance.config or "")
    entry = f"{INSTANCE_MARK}={mark}".encode()
    found: list[int] = []
    for pid, fields in live_processes():
        if int(fields[STAT_START]) < start:
            continue
        if ours and int(fields[STAT_SESSION]) == sid:
            found.append(pid)
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if entry in environ.split(b"\0"):
            found.append(pid)
    return found


def kill_processes(pids: Sequence[int], *, timeout: float) -> None:
    """SIGTERM each, wait up to ``timeout`` for them to go, SIGKILL what is left."""
    starts = {pid: process_start_time(pid) for pid in pids}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if starts[p] is not None and process_start_time(p) == starts[p]]
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def stop_everything(releases: ReleaseStore, instance: Instance, *, timeout: float) -> int:
    """Stop whatever of the instance is left after its group: its session's members and the
    processes that left the session carrying its mark. Returns how many there were."""
    left = instance_processes(releases, instance)
    if left:
        kill_processes(left, timeout=timeout)
    return len(left)


def foreign_listener(releases: ReleaseStore, instance: Instance) -> str | None:
    """Who answers on the instance's port when it is none of the processes of the
    instance's session (an earlier version's leftover, another program, or one of its own
    that left the session and so outlives its leader's watch): the health check's answer
    was not its own. None when its session listens there, or no listener can be seen."""
    if instance.port is None:
        return None
    session = session_members(instance.pid, instance.pid_start) if instance.pid else []
    if listens_on(session, instance.port):
        return None  # the common case, without reading every process's environment
    escaped = [p for p in instance_processes(releases, instance) if p not in session]
    if listens_on(escaped, instance.port):  # its own, but out of its leader's sight
        return (
            f"port {instance.port} answers from a process that left the instance's session "
            "(setsid, a double fork): a start command must stay in the foreground (use "
            "exec; drop '&', nohup and daemon options)"
        )
    who = holder(instance.port)
    if who is None:
        return None
    return (
        f"port {instance.port} answers, but not from this instance of {instance.hash}: "
        f"{who} holds it, and the instance cannot listen there"
    )


def stop_build_leftovers(releases: ReleaseStore, project_id: str) -> int:
    """Stop what a finished build left that escaped its session (``setsid``, a double fork)
    but carries its mark. Returns how many there were."""
    entry = f"{BUILD_MARK}={build_mark(releases, project_id)}".encode()
    left = [pid for pid, _fields, seen in marked_processes(entry) if seen == entry]
    if left:
        kill_processes(left, timeout=KILL_GRACE)
    return len(left)
