"""The ``Build`` step: run the runtime's build, then publish its dist as an immutable release."""

from __future__ import annotations

import logging
import shutil

from reconciler.controller.observe import Runtimes
from reconciler.controller.run import Run
from reconciler.errors import PermanentError
from reconciler.kinds import EventType, JobType, Status
from reconciler.logfiles import DEFAULT_LIMITS, LogLimits
from reconciler.releases import Release, ReleaseStore
from reconciler.runtimes.base import BuildRequest, Runtime

logger = logging.getLogger(__name__)


class Builder:
    def __init__(
        self, *, releases: ReleaseStore, runtimes: Runtimes, log_limits: LogLimits = DEFAULT_LIMITS
    ) -> None:
        self.releases = releases
        self.runtimes = runtimes
        self.log_limits = log_limits

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

    def _stage(self, run: Run, runtime: Runtime, generation: int) -> Release:
        """Build with the runtime, then hash and publish the dist as an immutable release."""
        spec, pid, desired = run.spec, run.facts.project_id, run.facts.desired
        assert desired is not None  # a build is planned only from a desired file
        source = spec.source_dir(desired.path)
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
        except BaseException as exc:
            if isinstance(exc, PermanentError):
                self.releases.keep_failed_build_log(staging)
                exc.args = (f"{exc}\nFull log: reconciler logs {pid} --log build",)
            self.releases.abort(staging)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
