"""The ``Build`` step: run the runtime's build, then publish its dist as an immutable release."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from reconciler.controller.observe import Runtimes
from reconciler.controller.run import Run
from reconciler.core.errors import DistTooLarge, NoRoom, PermanentError, TransientError
from reconciler.core.kinds import EventType, JobType, RuntimeName, Status
from reconciler.core.logfiles import DEFAULT_LIMITS, LogLimits
from reconciler.core.redact import redact
from reconciler.core.spec import GitSource, ProjectSpec, show_memory
from reconciler.runtimes.base import BuildRequest, BuildResult, Runtime
from reconciler.stores.facts import commit_fields
from reconciler.stores.gitcache import GitCache, GitError, fingerprint
from reconciler.stores.releases import Release, ReleaseStore, Staging

logger = logging.getLogger(__name__)


class Builder:
    def __init__(
        self,
        *,
        releases: ReleaseStore,
        runtimes: Runtimes,
        log_limits: LogLimits = DEFAULT_LIMITS,
        min_free: int = 256 * 1024 * 1024,
        git: GitCache | None = None,
        disk_default: int | None = None,
        caches: Path | None = None,
    ) -> None:
        self.caches = caches  # each project's package caches, under it
        self.disk_default = disk_default
        self.git = git or GitCache(releases.root.parent / "git")
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
        commit = commit_fields(run.built_from)
        logger.info(
            "%s: built %s (generation %s%s)", rec.project_id, release.hash, generation,
            f", commit {commit['commit'][:12]}" if commit else "",
        )  # fmt: skip
        rec.emit(
            EventType.BUILDING,
            {"message": f"Build complete: version {release.hash}", "hash": release.hash,
             **commit},
        )  # fmt: skip
        return release

    def _commit(
        self,
        staging: Staging,
        result: BuildResult,
        generation: int,
        run: Run,
        room: int | None,
        spec: ProjectSpec,
    ) -> Release:
        return self.releases.commit(
            staging,
            dist=result.dist,
            dist_exclude=result.dist_exclude,
            generation=generation,
            identity=result.identity,
            max_bytes=room,
            keep_failed_log=True,
            links_out=result.runs_app,
            room=_free_bytes(self.releases.root) - self.min_free,
            details={
                **result.details,
                **_found_docker(run),
                "desiredDigest": run.facts.digest,
                **({"source": run.built_from} if spec.git is not None else {}),
            },
        )

    def _quota(self, run: Run) -> int | None:
        """Bytes the next release may take within the project's disk quota (None: no quota).
        Refuses the build when the kept releases fill the quota already."""
        quota = run.spec.limits.disk if run.spec.limits.disk is not None else self.disk_default
        if quota is None:
            return None
        used = self.releases.usage(run.facts.project_id)
        if used >= quota:
            raise PermanentError(
                f"Disk quota: the releases of {run.facts.project_id} take {show_memory(used)} "
                f"of its {show_memory(quota)} (limits.disk); lower keep, or raise limits.disk"
            )
        return quota - used

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
        spec, project_id, desired = run.spec, run.facts.project_id, run.facts.desired
        assert desired is not None  # a build is planned only from a desired file
        self._check_space()
        room = self._quota(run)
        staging = self.releases.begin(project_id)
        work = staging.path.parent / f"{staging.path.name}-work"
        checkout = staging.path.parent / f"{staging.path.name}-src"
        try:
            if spec.git is not None:
                source = checkout
                run.built_from = self._checkout(run, spec.git, desired.path, checkout)
            else:
                source = spec.source_dir(desired.path)
                check_source(source, self.releases.root.parent)
                run.built_from = None
                if spec.production.follow and source.is_dir():
                    # before the build: an edit made while it runs is not in it, and is
                    # built next
                    output = spec.build_output(runtime.name) if spec.build.command else None
                    run.built_from = {"rev": fingerprint(source, output)}
            result = runtime.build(
                BuildRequest(
                    project_id,
                    run.runtime_spec,
                    source,
                    staging.logs,
                    work,
                    run.cancel,
                    lambda line: run.recorder.emit(EventType.BUILDING, {"message": line}),
                    self.log_limits,
                    self.caches / project_id if self.caches is not None else None,
                )
            )
            run.check()
            try:
                release = self._commit(staging, result, generation, run, room, spec)
            except DistTooLarge:
                if room is not None and room < self.releases.limits.max_bytes:
                    raise PermanentError(
                        f"Disk quota: the build output is larger than the {show_memory(room)} "
                        f"left of its limits.disk; the running version keeps serving"
                    ) from None
                raise
            runtime.finish_build(result, release)
            return release
        except NoRoom:
            self.releases.abort(staging)
            free = _free_bytes(self.releases.root)
            raise TransientError(
                f"no room for the release on {self.releases.root}: it takes more than the "
                f"{max(0, free - self.min_free) // 2**20} MiB free above the "
                f"{self.min_free // 2**20} MiB kept free for the state and the logs "
                "(--min-free-mb); nothing was kept; retried with backoff (free some space: "
                "old releases go with a lower keep)",
                delay=60,
            ) from None
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
                exc.args = (f"{exc}\nFull log: reconciler logs {project_id} --log build",)
            self.releases.abort(staging)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(checkout, ignore_errors=True)

    def _checkout(
        self, run: Run, source: GitSource, desired_file: Path, dest: Path
    ) -> dict[str, object]:
        """Fetch the ref and write a clean tree of its commit into ``dest``. A fetch that
        fails is transient (the running version keeps serving), reported with git's words."""
        project_id, rec = run.facts.project_id, run.recorder
        url = source.location(desired_file)
        rec.emit(EventType.BUILDING, {"message": f"Fetching {source.ref} from {redact(url)}"})
        try:
            commit = self.git.fetch(project_id, source, url)
        except GitError as exc:
            raise TransientError(f"{exc}; retried with backoff", delay=exc.delay) from None
        run.check()
        self.git.checkout(project_id, commit.sha, dest)
        rec.emit(
            EventType.BUILDING,
            {"message": f"Checked out {commit.short}: {commit.subject}", **commit_fields(
                {"commit": commit.sha, "subject": commit.subject})},
        )  # fmt: skip
        return {"rev": commit.sha, **commit.record()}


def _found_docker(run: Run) -> dict[str, object]:
    """A release of an app put on the docker runtime by its Dockerfile alone (its file names
    no runtime): say so with the release, as a build that found its app does."""
    desired = run.facts.desired
    if desired is None or desired.spec is None or desired.spec.runtime is not None:
        return {}
    if run.spec.runtime != RuntimeName.DOCKER:
        return {}
    return {"app": {"kind": "docker", "seen": ["Dockerfile"], "build": "docker build",
                    "start": None, "release": None}}  # fmt: skip


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
