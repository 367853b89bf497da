"""The process runtime: builds and instances as local processes (no Docker needed).

An instance runs in its own session (so it outlives the daemon) with stdout and stderr
appended to ``<release>/logs/app.log``. Its pid and the process start time from
``/proc/<pid>/stat`` are written to ``<release>/logs/instance.json``; observe() adopts it
only when both still match, so a reused pid is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from reconciler.core.errors import StartFailed, TransientError
from reconciler.core.fileio import atomic_write
from reconciler.core.kinds import RuntimeName
from reconciler.core.spec import Limits, ProjectId, ProjectSpec, is_hash8
from reconciler.core.timeutil import utcnow
from reconciler.runtimes.base import (
    CpuMeter,
    Instance,
    OnChange,
    Usage,
    tail_file,
    with_tail,
)
from reconciler.runtimes.process.builds import Builds
from reconciler.runtimes.process.exits import ExitWatch
from reconciler.runtimes.process.processes import (  # noqa: F401 - importable from here too
    BUILD_RECORD,
    INSTANCE_FILE,
    INSTANCE_MARK,
    KILL_GRACE,
    NICE,
    PRIVATE_ENV,
    STAT_SESSION,
    STAT_START,
    Launcher,
    _dist_exclude,
    _inside_source,
    _output_dir,
    _Reaper,
    _reaper,
    _store_tag,
    base_environ,
    build_instance,
    foreign_listener,
    instance_file,
    instance_mark,
    instance_processes,
    kill_group,
    kill_orphan_builds,
    kill_session,
    limited,
    live_processes,
    logger,
    marked_processes,
    pid_alive,
    process_start_time,
    session_members,
    session_port_mismatch,
    site_instance,
    spawn_detached,
    stop_everything,
)
from reconciler.runtimes.systemd import SiteUnits
from reconciler.stores.releases import Release, ReleaseStore


class ProcessRuntime(Builds):
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
        self._exits = ExitWatch(process_start_time)
        self.bind_host = bind_host
        self.launcher = launcher
        self.python = python
        self._records: dict[str, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}

    # -- build -----------------------------------------------------------------------------

    # -- instances -------------------------------------------------------------------------

    def start(self, release: Release, spec: ProjectSpec, *, port: int, config: str) -> Instance:
        """The start command runs in the release's ``dist/`` (what was built), never in the
        release root, so nothing of the release's bookkeeping is reachable by its paths."""
        release.logs.mkdir(exist_ok=True)
        env = {**base_environ(), **spec.plain_env, "PORT": str(port), "HOST": self.bind_host}
        env[INSTANCE_MARK] = instance_mark(self.releases, release.project_id, release.hash, config)
        command = spec.start.command or app_start(self.releases, release)
        argv = instance_argv(command, self.python, release.dist, self.bind_host, port)
        if command is None:
            package_root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
            )
        unit = f"reconciler-site-{release.project_id}-{release.hash}-{config}"
        log = release.log("app")
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"--- {utcnow()} starting {release.hash} ({config}) on port {port}\n")
        try:
            if self.units is not None:
                pid = self.units.start(
                    site_instance(release.project_id, release.hash, config),
                    f"reconciler site {release.project_id} {release.hash} (settings {config})",
                    release.path,
                    argv,
                    release.dist,
                    env,
                    log,
                    spec.limits.otherwise(self.limits),
                )
            else:
                pid = self.launcher(
                    argv,
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

    def alive(self, instance: Instance, *, watch: bool = True) -> bool:
        """From the exit watch, else ``/proc``; a live leader is watched (``watch``) from then."""
        pid, start = instance.pid, instance.pid_start
        if pid is None or start is None:
            return False
        if self._exits.alive(pid, start):
            return True
        _reaper.poll(pid)
        if not pid_alive(pid, start):
            return False
        if watch:
            self._exits.watch(pid, start, instance.project_id)
        return True

    def watch(self, changed: OnChange, stop: threading.Event) -> None:
        """Each instance's leader that exits is reported at once (``changed(project)``)."""
        threading.Thread(target=self._exits.run, args=(changed, stop), daemon=True).start()

    def close(self) -> None:
        self._exits.close()

    def describe_exit(self, instance: Instance) -> str:
        """Why an instance ended before it became ready. Raises TransientError when its
        executable was busy (ETXTBSY): a process forked by another thread while this
        release's files were being written still held one open for writing; that passes,
        so the start is tried again rather than failed."""
        log = self.releases.log(instance.project_id, instance.hash, "app")
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
        left = instance_processes(self.releases, instance)  # a daemonizing start command
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
        if instance.pid is not None and instance.pid_start is not None:
            self._exits.forget(instance.pid, instance.pid_start)  # a stop of ours is no news
        running = functools.partial(self.alive, instance, watch=False)
        if instance.pid is not None and running():
            logger.info("stopping %s %s (pid %s)", instance.project_id, instance.hash, instance.pid)
            kill_group(instance.pid, timeout=timeout, alive=running)
            deadline = time.monotonic() + 2
            while running() and time.monotonic() < deadline:
                time.sleep(0.02)
        left = stop_everything(self.releases, instance, timeout=min(timeout, 2.0))
        if left:
            logger.info("%s: stopped %d process(es) of %s left behind (its session, or its mark)",
                        instance.project_id, left, instance.hash)  # fmt: skip
        record = self.releases.logs_dir(instance.project_id, instance.hash) / instance_file(
            instance.config
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

    def wrong_port(self, instance: Instance) -> str | None:
        if self.units is not None:
            return None  # a site unit's processes are its own user's
        return session_port_mismatch(instance.pid, instance.pid_start, instance.port)

    def foreign(self, instance: Instance) -> str | None:
        return None if self.units is not None else foreign_listener(self.releases, instance)

    def stop_leftover_builds(self) -> list[str]:
        """Builds a killed daemon left running (and, with site users, their units)."""
        stopped = kill_orphan_builds(self.releases)
        if self.units is not None:
            stopped += [f"reconciler-build@{b}" for b in self.units.stop_builds()]
        return stopped

    def stop_strays(self) -> list[str]:
        return kill_orphan_instances(self.releases, self.units)


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
    for pid, _fields, mark in marked_processes(prefix, skip=frozenset(known)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        stopped.append(mark.decode(errors="replace").split("=", 1)[1])
    return stopped


def app_start(releases: ReleaseStore, release: Release) -> str | None:
    """The start command a release found at its build (its manifest's ``app.start``)."""
    app = releases.app_of(release.project_id, release.hash)
    start = app.get("start") if app is not None else None
    return start if isinstance(start, str) else None


def instance_argv(command: str | None, python: str, dist: Path, host: str, port: int) -> list[str]:
    """What an instance runs: its start command by /bin/sh, or (none) the built-in static
    server on its dist."""
    if command is not None:
        return ["/bin/sh", "-c", command]
    static = "reconciler.runtimes.process.static"
    return [python, "-m", static, "--dir", str(dist), "--host", host, "--port", str(port)]
