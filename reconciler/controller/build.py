"""The ``Build`` step: run the runtime's build, then publish its dist as an immutable release."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from reconciler.controller.observe import Runtimes
from reconciler.controller.run import Run
from reconciler.errors import PermanentError, TransientError
from reconciler.kinds import EventType, JobType, Status
from reconciler.logfiles import DEFAULT_LIMITS, LogLimits
from reconciler.releases import Release, ReleaseStore
from reconciler.runtimes.base import BuildRequest, Runtime

logger = logging.getLogger(__name__)


class Builder:
    def __init__(
        self,
        *,
        releases: ReleaseStore,
        runtimes: Runtimes,
        log_limits: LogLimits = DEFAULT_LIMITS,
        min_free: int = 256 * 1024 * 1024,
    ) -> None:
        self.releases = releases
        self.runtimes = runtimes
        self.log_limits = log_limits
        self.min_free = min_free

    def build(self, run: Run, generation: int) -> Release:
        spec, rec = run.spec, run.recorder
        runtime = self.runtimes.for_spec(spec)
        rec.update(
            productionStatus=Status.BUILDING,
            productionError=None,
            failedDigest=None,
            desiredDigest=run.facts.digest,
        )
        logger.info("%s: build generation %s (%s)", rec.project_id, generation, runtime.name)
        rec.emit(EventType.BUILDING, {"message": f"Build started (generation {generation})"})
        with rec.job(JobType.BUILD, generation=generation) as job:
            release = self._stage(run, runtime, generation)
            job.hash = release.hash
        logger.info("%s: built %s (generation %s)", rec.project_id, release.hash, generation)
        rec.emit(
            EventType.BUILDING,
            {"message": f"Build complete: version {release.hash}", "hash": release.hash},
        )
        return release

    def _check_space(self) -> None:
        """Refuse a build early, before it fills the disk, when too little is free."""
        free = _free_bytes(self.releases.root)
        if free < self.min_free:
            raise TransientError(
                f"only {free // 2**20} MiB free on {self.releases.root}; a build needs at "
                f"least {self.min_free // 2**20} MiB (--min-free-mb); retried with backoff",
                delay=60,
            )

    def _stage(self, run: Run, runtime: Runtime, generation: int) -> Release:
        """Build with the runtime, then hash and publish the dist as an immutable release."""
        spec, pid, desired = run.spec, run.facts.project_id, run.facts.desired
        assert desired is not None  # a build is planned only from a desired file
        source = spec.source_dir(desired.path)
        check_source(source, self.releases.root.parent)
        self._check_space()
        staging = self.releases.begin(pid)
        work = staging.path.parent / f"{staging.path.name}-work"
        try:
            result = runtime.build(
                BuildRequest(
                    pid,
                    spec,
                    source,
                    staging.logs,
                    work,
                    run.cancel,
                    lambda line: run.recorder.emit(EventType.BUILDING, {"message": line}),
                    self.log_limits,
                )
            )
            run.check()
            release = self.releases.commit(
                staging,
                dist=result.dist,
                dist_exclude=result.dist_exclude,
                generation=generation,
                details={**result.details, "desiredDigest": run.facts.digest},
            )
            runtime.finish_build(result, release)
            return release
        except OSError as exc:
            self.releases.abort(staging)
            if exc.errno == errno.ENOSPC:
                raise TransientError(
                    f"the disk is full ({self.releases.root}): the build was cleaned up and is "
                    "retried with backoff; free some space (old releases: lower keep)",
                    delay=60,
                ) from None
            raise
        except BaseException as exc:
            if isinstance(exc, PermanentError):
                self.releases.keep_failed_build_log(staging)
                exc.args = (f"{exc}\nFull log: reconciler logs {pid} --log build",)
            self.releases.abort(staging)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _free_bytes(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


def check_source(source: Path, data_dir: Path) -> None:
    """Refuse sources a build must never read: the whole filesystem, or a tree that holds
    the daemon's own data (a release would copy its own staging dir)."""
    real = os.path.realpath(source)
    data = os.path.realpath(data_dir)
    if real == os.sep:
        raise PermanentError("source / is the whole filesystem; point source at a project dir")
    if data == real or data.startswith(real + os.sep):
        raise PermanentError(
            f"source {real} contains the data dir {data}; move the project or the data dir "
            "(a build would read the releases it writes)"
        )
