"""Builds on this host: the build command in the project's source dir, in its own session (or a
reconciler-build@ unit with --site-users), its output handed on line by line, cancelled whole."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

from reconciler.core.errors import BuildFailed, Cancelled
from reconciler.core.fileio import atomic_write
from reconciler.core.kinds import RuntimeName
from reconciler.core.spec import Limits
from reconciler.runtimes.base import (
    BuildRequest,
    BuildResult,
    OutputTail,
    describe_seconds,
    with_tail,
)
from reconciler.runtimes.process.apps import (
    found_app,
    keep_dependencies,
    noting,
    relocate_venvs,
    restore_dependencies,
)
from reconciler.runtimes.process.processes import (
    BUILD_MARK,
    BUILD_RECORD,
    KILL_GRACE,
    _dist_exclude,
    _inside_source,
    _output_dir,
    base_environ,
    build_instance,
    build_mark,
    kill_group,
    kill_session,
    limited,
    process_start_time,
    stop_build_leftovers,
)
from reconciler.runtimes.systemd import SiteUnits
from reconciler.stores.releases import Release, ReleaseStore

logger = logging.getLogger(__name__)


class Builds:
    if TYPE_CHECKING:  # what the runtime it is part of provides
        name: RuntimeName
        releases: ReleaseStore
        units: SiteUnits | None
        build_limits: Limits

    def build(self, request: BuildRequest) -> BuildResult:
        """Build the source as its desired file says, or (it names no build or start command)
        as its files say (``detect``); an app's release keeps what was found."""
        app, say = found_app(request), noting(request)
        if app is not None:
            request = replace(request, spec=app.applied(request.spec))
            say(f"Detected {app.summary}")
            if self.units is None:
                restore_dependencies(request, say)
        result = self._build(request)
        runs_app = request.spec.start.command is not None or (app is not None and app.start)
        if runs_app:
            relocate_venvs(result.dist, say)
        if app is not None:
            details = {**result.details, "app": app.record()}
            result = replace(result, details=details, identity=app.identity)
        return replace(result, runs_app=bool(runs_app), request=request)

    def _build(self, request: BuildRequest) -> BuildResult:
        spec = request.spec
        output = _output_dir(spec)
        dist = request.source / output
        if not request.source.is_dir():
            raise BuildFailed(f"source dir {request.source} does not exist")
        _inside_source(request.source, dist, output)
        if spec.build.command is None:
            if not dist.is_dir():
                raise BuildFailed(
                    f"Build failed: no build.command, and the source has no {output}/ "
                    f"(build.output: {output}); build it into the source, set build.command, "
                    "or set build.output to the dir that holds the site"
                )
            request.on_line(f"No build command: using {output}/ as it is")
            return BuildResult(
                dist, {"runtime": self.name, "output": output}, _dist_exclude(output)
            )
        request.log_dir.mkdir(parents=True, exist_ok=True)
        with open(request.log_dir / "build.log", "a", encoding="utf-8") as log:
            tail = OutputTail(request.on_line, log, request.log_limits)
            tail.add(f"$ {spec.build.command}")
            code = self._run_build(request, spec.build.command, tail)
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
                f"(build.output: {output}); set build.output to the dir the build writes"
            )
        return BuildResult(
            dist,
            {"runtime": self.name, "output": output, "buildCommand": spec.build.command},
            _dist_exclude(output),
        )

    def _run_build(self, request: BuildRequest, command: str, tail: OutputTail) -> int:
        spec = request.spec
        caches = package_caches(request.cache_dir) if self.units is None else {}
        env = {**base_environ(), **caches, **spec.plain_env}
        env[BUILD_MARK] = build_mark(self.releases, request.project_id)
        if self.units is not None:
            return self._run_build_unit(request, command, tail, env)
        proc = subprocess.Popen(
            limited(["/bin/sh", "-c", command], spec.build.limits.otherwise(self.build_limits)),
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
        try:
            atomic_write(record, json.dumps({"pid": proc.pid, "pidStart": start}).encode() + b"\n")
        except OSError:  # a full disk: the build is not left running unwatched
            kill_session(proc.pid, start, timeout=KILL_GRACE)
            proc.wait()
            stdout.close()
            raise
        try:
            return self._wait_build(request, tail, proc, stdout, command, start)
        finally:
            self._leftovers(request, proc.pid, start)
            record.unlink(missing_ok=True)

    def _leftovers(self, request: BuildRequest, pid: int, start: int | None) -> None:
        """Stop what the build left running: in its session, and outside it (``setsid``)
        carrying its mark. Before its output is closed: a leftover holds the pipe open."""
        kill_session(pid, start, timeout=KILL_GRACE)
        if stop_build_leftovers(self.releases, request.project_id):
            logger.info("%s: stopped what its build left running", request.project_id)

    def _run_build_unit(
        self, request: BuildRequest, command: str, tail: OutputTail, env: dict[str, str]
    ) -> int:
        """The build as a unit of its own user (``--site-users``): see SiteUnits.build."""
        assert self.units is not None
        spec = request.spec
        try:
            code, reason = self.units.build(
                build_instance(request.project_id),
                f"reconciler build {request.project_id}",
                request.source,
                ["/bin/sh", "-c", command],
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
                    f"Build failed: {command} timed out after "
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
        command: str,
        start: int | None,
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
                    f"Build failed: {command} timed out after "
                    f"{describe_seconds(spec.build.timeout)}",
                    tail.text(),
                )
            )
        # The shell is gone; anything it left in the group is killed with the group, and
        # what left the group too (the reader ends when the last writer of the pipe goes)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._leftovers(request, proc.pid, start)
        reader.join(5)
        if not reader.is_alive():  # a close while it reads would wait for its lock
            stdout.close()
        return proc.returncode

    def finish_build(self, result: BuildResult, release: Release) -> None:
        """The release phase (a Procfile's ``release:``): once per built release, in its
        files, before it goes live; a failure fails the deploy (the old version serves)."""
        app = result.details.get("app")
        if result.request is None or not isinstance(app, dict):
            return
        command = app.get("release")
        if self.units is None:
            keep_dependencies(result.request)
        if not isinstance(command, str):
            return
        request = replace(result.request, source=release.dist)
        with open(release.log("build"), "a", encoding="utf-8") as log:
            tail = OutputTail(request.on_line, log, request.log_limits)
            tail.add(f"$ {command}  (release phase)")
            code = self._run_build(request, command, tail)
        if code != 0:
            failed = self.releases.failed_build_log(release.project_id)
            failed.parent.mkdir(exist_ok=True)
            shutil.copyfile(release.log("build"), failed)
            raise BuildFailed(
                with_tail(
                    f"Release phase failed: {command} exited with code {code}; {release.hash} "
                    "was not brought live",
                    tail.text(),
                )
            )


# package managers' download caches, per project, so a build with unchanged dependencies
# fetches nothing again (pip, npm, yarn, pnpm read these variables)
CACHE_VARIABLES = {
    "PIP_CACHE_DIR": "pip",
    "npm_config_cache": "npm",
    "YARN_CACHE_FOLDER": "yarn",
    "npm_config_store_dir": "pnpm",
}


def package_caches(cache_dir: Path | None) -> dict[str, str]:
    """The environment that points a build's package managers at the project's caches (none
    for a build unit, which sees only its source tree)."""
    if cache_dir is None:
        return {}
    for sub in CACHE_VARIABLES.values():
        (cache_dir / sub).mkdir(parents=True, exist_ok=True)
    found = {name: str(cache_dir / sub) for name, sub in CACHE_VARIABLES.items()}
    return {**found, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
