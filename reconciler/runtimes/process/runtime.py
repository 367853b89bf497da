"""The process runtime: builds and instances as local processes (no Docker needed).

An instance runs in its own session (so it outlives the daemon) with stdout and stderr
appended to ``<release>/logs/app.log``. Its pid and the process start time from
``/proc/<pid>/stat`` are written to ``<release>/logs/instance.json``; observe() adopts it
only when both still match, so a reused pid is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from reconciler.core.errors import BuildFailed, Cancelled, StartFailed, TransientError
from reconciler.core.fileio import atomic_write
from reconciler.core.kinds import RuntimeName
from reconciler.core.spec import Limits, ProjectId, ProjectSpec, is_hash8
from reconciler.core.timeutil import utcnow
from reconciler.runtimes.base import (
    BuildRequest,
    BuildResult,
    CpuMeter,
    Instance,
    Notify,
    OutputTail,
    Usage,
    describe_seconds,
    tail_file,
    with_tail,
)
from reconciler.runtimes.systemd import SiteUnits
from reconciler.stores.releases import Release, ReleaseStore

logger = logging.getLogger(__name__)

INSTANCE_FILE = "instance.json"  # an instance started before instances named their config


def instance_file(config: str | None) -> str:
    """The record of one instance, in its release's ``logs/`` (one per config)."""
    return INSTANCE_FILE if config is None else f"instance-{config}.json"


KILL_GRACE = 0.5
BUILD_RECORD = ".build.json"  # the running build of a project: pid and start time


INSTANCE_MARK = "RECONCILER_INSTANCE"  # in every instance's environment: whose it is


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


def kill_orphan_instances(releases: ReleaseStore, units: SiteUnits | None = None) -> list[str]:
    """At startup, after adoption: stop instance processes of this data dir that no record
    names (the daemon died between starting one and writing its record), and with
    ``--site-users`` the site units no record names. Returns their marks."""
    runtime = ProcessRuntime(releases)
    known: set[int] = set()
    names: set[str] = set()
    if releases.root.is_dir():
        for project in releases.root.iterdir():
            for found in runtime.observe(ProjectId(project.name)):
                known.add(found.pid or 0)
                names.add(site_instance(found.project_id, found.hash, found.config))
    stopped = []
    for name in units.running() if units is not None else ():
        if units is not None and name not in names:
            with contextlib.suppress(OSError):
                units.stop(name, KILL_GRACE * 4)
                stopped.append(f"reconciler-site@{name}")
    prefix = f"{INSTANCE_MARK}={_store_tag(releases)}:".encode()
    for pid, fields in live_processes():
        if int(fields[STAT_SESSION]) in known:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        mark = next((v for v in environ.split(b"\0") if v.startswith(prefix)), None)
        if mark is None:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        stopped.append(mark.decode(errors="replace").split("=", 1)[1])
    return stopped


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
    return stopped


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
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while found and time.monotonic() < deadline:
        _reaper.poll()
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
    """Waits for the instances this process started, so they never linger as zombies."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._exit_codes: dict[int, int] = {}
        self._starts: dict[int, int] = {}

    def watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Until it is watched nothing reaps ``proc``, so its start time is read here even
        when it has exited already (a start command that forks and exits at once): without
        it, what such a command left in its session could not be told apart from others'."""
        start = process_start_time(proc.pid, zombie=True)
        with self._lock:
            if start is not None:
                self._starts[proc.pid] = start
            self._procs.append(proc)

    def start_time(self, pid: int) -> int | None:
        """The start time recorded when ``pid`` was launched (None for other launchers)."""
        with self._lock:
            return self._starts.pop(pid, None)

    def poll(self) -> None:
        with self._lock:
            for proc in list(self._procs):
                code = proc.poll()
                if code is not None:
                    self._exit_codes[proc.pid] = code
                    self._procs.remove(proc)

    def exit_code(self, pid: int) -> int | None:
        self.poll()
        with self._lock:
            return self._exit_codes.get(pid)


_reaper = _Reaper()


class ProcessRuntime:
    name = RuntimeName.PROCESS

    def __init__(
        self,
        releases: ReleaseStore,
        *,
        bind_host: str = "127.0.0.1",
        launcher: Launcher = spawn_detached,
        python: str = sys.executable,
        limits: Limits = Limits(),  # noqa: B008 - frozen
        build_limits: Limits = Limits(),  # noqa: B008 - frozen
        units: SiteUnits | None = None,
    ) -> None:
        self.releases = releases
        self.units = units  # --site-users: each instance a reconciler-site@ unit of its own user
        self.limits = limits
        self.build_limits = build_limits
        self._cpu = CpuMeter()
        self._scan: tuple[float, dict[int, list[tuple[int, float, int]]]] | None = None
        self._scan_lock = threading.Lock()
        self.bind_host = bind_host
        self.launcher = launcher
        self.python = python
        self._records: dict[str, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}

    # -- build -----------------------------------------------------------------------------

    def build(self, request: BuildRequest) -> BuildResult:
        spec = request.spec
        output = _output_dir(spec)
        dist = request.source / output
        if not request.source.is_dir():
            raise BuildFailed(f"source dir {request.source} does not exist")
        _inside_source(request.source, dist, output)
        if spec.build.command is None:
            if not dist.is_dir():
                raise BuildFailed(
                    f"no build.command and {output}/ does not exist in {request.source}; "
                    "build it or set build.command"
                )
            request.on_line(f"No build command: using {output}/ as it is")
            return BuildResult(
                dist, {"runtime": self.name, "output": output}, _dist_exclude(output)
            )
        request.log_dir.mkdir(parents=True, exist_ok=True)
        with open(request.log_dir / "build.log", "a", encoding="utf-8") as log:
            tail = OutputTail(request.on_line, log, request.log_limits)
            tail.add(f"$ {spec.build.command}")
            code = self._run_build(request, tail)
        if code != 0:
            raise BuildFailed(
                with_tail(
                    f"Build failed: {spec.build.command} exited with code {code}", tail.text()
                )
            )
        _inside_source(request.source, dist, output)
        if not dist.is_dir():
            raise BuildFailed(
                f"Build failed: {spec.build.command} succeeded but produced no {output}/ "
                f"in {request.source}"
            )
        return BuildResult(
            dist,
            {"runtime": self.name, "output": output, "buildCommand": spec.build.command},
            _dist_exclude(output),
        )

    def _run_build(self, request: BuildRequest, tail: OutputTail) -> int:
        spec = request.spec
        env = {**base_environ(), **spec.env}
        if self.units is not None:
            return self._run_build_unit(request, tail, env)
        proc = subprocess.Popen(
            limited(
                ["/bin/sh", "-c", spec.build.command or "true"],
                spec.build.limits.otherwise(self.build_limits),
            ),
            cwd=request.source,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
        assert proc.stdout is not None
        stdout = proc.stdout
        record = request.work_dir.parent / BUILD_RECORD
        start = process_start_time(proc.pid)
        atomic_write(record, json.dumps({"pid": proc.pid, "pidStart": start}).encode() + b"\n")
        try:
            return self._wait_build(request, tail, proc, stdout)
        finally:
            kill_session(proc.pid, start, timeout=KILL_GRACE)  # what the build left running
            record.unlink(missing_ok=True)

    def _run_build_unit(self, request: BuildRequest, tail: OutputTail, env: dict[str, str]) -> int:
        """The build as a unit of its own user (``--site-users``): see SiteUnits.build."""
        assert self.units is not None
        spec = request.spec
        try:
            code, reason = self.units.build(
                build_instance(request.project_id),
                f"reconciler build {request.project_id}",
                request.source,
                ["/bin/sh", "-c", spec.build.command or "true"],
                # the build's user has no home; the unit's /tmp is its own (PrivateTmp)
                {**env, "HOME": "/tmp"},  # noqa: S108
                spec.build.limits.otherwise(self.build_limits),
                on_output=tail.add,
                cancel=request.cancel,
                timeout=spec.build.timeout,
            )
        except OSError as exc:
            raise BuildFailed(f"Build failed: could not start its unit: {exc}") from None
        if reason == "cancelled":
            raise Cancelled("build cancelled")
        if reason == "timeout":
            raise BuildFailed(
                with_tail(
                    f"Build failed: {spec.build.command} timed out after "
                    f"{describe_seconds(spec.build.timeout)}",
                    tail.text(),
                )
            )
        return code

    def _wait_build(
        self,
        request: BuildRequest,
        tail: OutputTail,
        proc: subprocess.Popen[bytes],
        stdout: IO[bytes],
    ) -> int:
        spec = request.spec

        def pump() -> None:
            for raw in iter(stdout.readline, b""):
                tail.add(raw.decode("utf-8", "replace"))

        reader = threading.Thread(
            target=pump, name=f"build-output-{request.project_id}", daemon=True
        )
        reader.start()
        deadline = time.monotonic() + spec.build.timeout
        reason = None
        while proc.poll() is None:
            if request.cancel.wait(0.05):
                reason = "cancelled"
                break
            if time.monotonic() > deadline:
                reason = "timeout"
                break
        if reason is not None:
            kill_group(proc.pid, timeout=KILL_GRACE, alive=lambda: proc.poll() is None)
            proc.wait()
            reader.join(2)
            stdout.close()
            if reason == "cancelled":
                raise Cancelled("build cancelled")
            raise BuildFailed(
                with_tail(
                    f"Build failed: {spec.build.command} timed out after "
                    f"{describe_seconds(spec.build.timeout)}",
                    tail.text(),
                )
            )
        # The shell is gone; anything it left in the group is killed with the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join(5)
        stdout.close()
        return proc.returncode

    def finish_build(self, result: BuildResult, release: Release) -> None:
        return None

    # -- instances -------------------------------------------------------------------------

    def _argv(self, release: Release, spec: ProjectSpec, port: int) -> list[str]:
        if spec.start.command is None:
            return [
                self.python,
                "-m",
                "reconciler.runtimes.process.static",
                "--dir",
                str(release.dist),
                "--host",
                self.bind_host,
                "--port",
                str(port),
            ]
        return ["/bin/sh", "-c", spec.start.command]

    def start(self, release: Release, spec: ProjectSpec, *, port: int, config: str) -> Instance:
        """The start command runs in the release's ``dist/`` (what was built), never in the
        release root, so nothing of the release's bookkeeping is reachable by its paths."""
        release.logs.mkdir(exist_ok=True)
        env = {**base_environ(), **spec.env, "PORT": str(port), "HOST": self.bind_host}
        env[INSTANCE_MARK] = instance_mark(self.releases, release.project_id, release.hash, config)
        if spec.start.command is None:
            package_root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
            )
        unit = f"reconciler-site-{release.project_id}-{release.hash}-{config}"
        log = release.logs / "app.log"
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"--- {utcnow()} starting {release.hash} ({config}) on port {port}\n")
        try:
            if self.units is not None:
                pid = self.units.start(
                    site_instance(release.project_id, release.hash, config),
                    f"reconciler site {release.project_id} {release.hash} (settings {config})",
                    release.path,
                    self._argv(release, spec, port),
                    release.dist,
                    env,
                    log,
                    spec.limits.otherwise(self.limits),
                )
            else:
                pid = self.launcher(
                    self._argv(release, spec, port),
                    release.dist,
                    env,
                    log,
                    unit,
                    spec.limits.otherwise(self.limits),
                )
        except OSError as exc:
            raise StartFailed(f"could not start {release.hash}: {exc}") from None
        start = _reaper.start_time(pid)
        for _ in range(0 if start is not None else 50):  # allow a slow fork
            start = process_start_time(pid)
            if start is not None:
                break
            if _reaper.exit_code(pid) is not None:
                break
            time.sleep(0.01)
        instance = Instance(
            release.project_id,
            release.hash,
            self.name,
            port,
            utcnow(),
            pid=pid,
            pid_start=start,
            config=config,
        )
        record = {
            "pid": pid,
            "pidStart": start,
            "port": port,
            "startedAt": instance.started_at,
            "config": config,
        }
        atomic_write(release.logs / instance_file(config), json.dumps(record).encode() + b"\n")
        return instance

    def usage(self, instance: Instance) -> Usage | None:
        """Resident memory and CPU time of every process of the instance (its session)."""
        if instance.pid is None or instance.pid_start is None or not self.alive(instance):
            return None
        members = [
            (cpu, rss)
            for start, cpu, rss in self._sessions().get(instance.pid, ())
            if start >= instance.pid_start
        ]
        cpu = sum(c for c, _r in members)
        memory = sum(r for _c, r in members)
        return Usage(memory, self._cpu.percent(instance.key + str(instance.pid), cpu))

    def _sessions(self) -> dict[int, list[tuple[int, float, int]]]:
        """Every live process by session id, as (start, CPU seconds, resident bytes): one
        scan of /proc, reused for a second (a sampling pass asks for every instance)."""
        now = time.monotonic()
        with self._scan_lock:
            if self._scan is not None and now - self._scan[0] < 1.0:
                return self._scan[1]
            page, tick = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
            found: dict[int, list[tuple[int, float, int]]] = {}
            for _pid, fields in live_processes():
                found.setdefault(int(fields[STAT_SESSION]), []).append(
                    (
                        int(fields[STAT_START]),
                        (int(fields[11]) + int(fields[12])) / tick,  # utime + stime
                        int(fields[21]) * page,  # rss
                    )
                )
            self._scan = (now, found)
            return found

    def exits(self, project_id: ProjectId) -> list[str]:
        return []  # a process that ended is not running: describe_exit says why

    def alive(self, instance: Instance) -> bool:
        _reaper.poll()
        return pid_alive(instance.pid, instance.pid_start)

    def describe_exit(self, instance: Instance) -> str:
        """Why an instance ended before it became ready. Raises TransientError when its
        executable was busy (ETXTBSY): a process forked by another thread while this
        release's files were being written still held one open for writing; that passes,
        so the start is tried again rather than failed."""
        log = self.releases.project_dir(instance.project_id) / instance.hash / "logs" / "app.log"
        if self.units is not None:
            name = site_instance(instance.project_id, instance.hash, instance.config)
            return with_tail(
                f"Start failed: the instance of {instance.hash} {self.units.why_ended(name)}",
                tail_file(log),
            )
        code = _reaper.exit_code(instance.pid) if instance.pid else None
        how = f"exited with code {code}" if code is not None else "exited"
        attempt = tail_file(log).rsplit("\n--- ", 1)[-1]  # this start's lines only
        if code == 126 and "Text file busy" in attempt:
            raise TransientError(
                f"the instance of {instance.hash} could not run its executable yet (text file "
                f"busy: it was still open for writing somewhere); starting it again",
                delay=0.2,
            )
        left = session_members(instance.pid, instance.pid_start) if instance.pid else []
        if left:
            return with_tail(
                f"Start failed: the start command of {instance.hash} {how} and left "
                f"{len(left)} process(es) running in the background; a start command must "
                "stay in the foreground (use exec; drop '&', nohup and daemon options)",
                tail_file(log),
            )
        return with_tail(
            f"Start failed: the instance of {instance.hash} {how} before it became ready",
            tail_file(log),
        )

    def stop(self, instance: Instance, *, timeout: float = 10) -> None:
        """Stop everything the instance started: its process group, then whatever else is
        left in its session (also when the leader has exited already). A site's own unit is
        stopped by systemd, which stops its whole cgroup."""
        if self.units is not None:
            name = site_instance(instance.project_id, instance.hash, instance.config)
            try:
                self.units.stop(name, timeout)
            except OSError as exc:
                raise TransientError(f"could not stop {instance.hash}: {exc}", delay=2) from None
        if instance.pid is not None and self.alive(instance):
            logger.info("stopping %s %s (pid %s)", instance.project_id, instance.hash, instance.pid)
            kill_group(instance.pid, timeout=timeout, alive=lambda: self.alive(instance))
            deadline = time.monotonic() + 2
            while self.alive(instance) and time.monotonic() < deadline:
                time.sleep(0.02)
        if instance.pid is not None:
            left = kill_session(instance.pid, instance.pid_start, timeout=min(timeout, 2.0))
            if left:
                logger.info(
                    "%s: stopped %d process(es) of %s left in its session",
                    instance.project_id,
                    len(left),
                    instance.hash,
                )
        record = (
            self.releases.project_dir(instance.project_id)
            / instance.hash
            / "logs"
            / instance_file(instance.config)
        )
        with contextlib.suppress(FileNotFoundError, ValueError):
            if json.loads(record.read_text()).get("pid") == instance.pid:
                record.unlink()

    def observe(self, project_id: ProjectId) -> list[Instance]:
        found = []
        directory = str(self.releases.project_dir(project_id))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        for entry in entries:
            if not is_hash8(entry.name) or entry.is_symlink():
                continue
            logs = os.path.join(entry.path, "logs")
            try:
                names = sorted(
                    n for n in os.listdir(logs) if n.startswith("instance") and n.endswith(".json")
                )
            except OSError:
                continue
            for name in names:
                record = self._record(os.path.join(logs, name))
                if record is None:
                    continue
                pid, start = record.get("pid"), record.get("pidStart")
                config = record.get("config")
                if name != instance_file(config if isinstance(config, str) else None):
                    continue  # a record under a name that does not match what it says
                if isinstance(pid, int) and isinstance(start, int) and pid_alive(pid, start):
                    found.append(
                        Instance(
                            project_id,
                            entry.name,
                            self.name,
                            record.get("port"),
                            str(record.get("startedAt", "")),
                            pid=pid,
                            pid_start=start,
                            config=config if isinstance(config, str) else None,
                        )
                    )
        return found

    def _record(self, path: str) -> dict[str, Any] | None:
        """An instance record, parsed again only when the file changed."""
        try:
            st = os.stat(path, follow_symlinks=False)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            memo = self._records.get(path)
            if memo is not None and memo[0] == key:
                return memo[1]
            with open(path, "rb") as fh:
                data = json.loads(fh.read())
        except (OSError, ValueError):
            return None
        record = data if isinstance(data, dict) else None
        if len(self._records) > 10_000:
            self._records.clear()
        self._records[path] = (key, record)
        return record

    def remove_version(self, project_id: ProjectId, version: str) -> None:
        return None

    def watch(self, notify: Notify, stop: threading.Event) -> None:
        return None  # processes report nothing by themselves: the health poll notices deaths

    def close(self) -> None:
        return None
