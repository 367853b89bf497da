"""Following sources: notice a new commit of a followed ref, or a change of a followed source
dir, record where the source stands (the ``sources`` table) and queue the project.

A followed source is checked when it is first seen, when the files that name its tip change
(a local repository's ``refs/`` and ``packed-refs``, watched with inotify, so a ``git push``
to a repository on this host deploys with no hook script), when a webhook nudges it
(``data/hooks/nudge/<id>``), and every ``poll`` seconds (remote repositories have nothing to
watch). A source dir is watched and fingerprinted after a quiet spell. A check that fails
keeps the last known revision (what runs keeps running) and records git's message; it is
tried again with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from reconciler.core.kinds import RuntimeName
from reconciler.core.queue import RateLimiter, WorkQueue
from reconciler.core.redact import redact
from reconciler.core.spec import InvalidProjectId, ProjectId, ProjectSpec, check_project_id
from reconciler.sources.hooks import DESIRED, SECRETS
from reconciler.sources.watch import CHANGES, Debouncer
from reconciler.stores.desired.git import ConfigRepo
from reconciler.stores.gitcache import GitError, fingerprint, ls_remote
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)

MIN_RETRY = 5.0


@dataclass(frozen=True)
class Target:
    """What one project follows."""

    kind: str  # "git" | "dir"
    location: str  # the repository (as git is given it) or the source dir
    ref: str | None
    poll: float
    output: str | None = None  # dir: the build output, left out of the fingerprint
    watch: tuple[tuple[str, bool], ...] = ()  # (local path, recursive) whose changes matter


def local_git_dir(location: str) -> Path | None:
    """The git dir of a repository on this host (bare or not), else None."""
    path = location.removeprefix("file://") if location.startswith("file://") else location
    if "://" in path:
        return None
    candidate = Path(path)
    if (candidate / ".git").is_dir():
        return candidate / ".git"
    if (candidate / "HEAD").is_file() and (candidate / "refs").is_dir():
        return candidate
    return None


def target_for(
    spec: ProjectSpec | None, desired_file: Path | None, *, default_poll: float,
    default_runtime: RuntimeName,
) -> Target | None:  # fmt: skip
    if spec is None or desired_file is None or not spec.production.follow:
        return None
    source = spec.git
    if source is not None:
        if source.pinned_commit is not None:
            return None  # a commit never moves
        location = source.location(desired_file)
        gitdir = local_git_dir(location)
        watch = ((str(gitdir), False), (str(gitdir / "refs"), True)) if gitdir else ()
        return Target("git", location, source.ref, source.poll or default_poll, None, watch)
    directory = str(spec.source_dir(desired_file))
    # the output a build command writes is left out (a build must not trigger a build); with
    # no build command the output is the source itself
    output = spec.build_output(spec.runtime or default_runtime) if spec.build.command else None
    return Target("dir", directory, None, default_poll, output, ((directory, True),))


class _Events(FileSystemEventHandler):
    def __init__(self, follower: Follower, root: str) -> None:
        self.follower = follower
        self.root = root

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        self.follower.changed(self.root)


def missing_ref(ref: str, *, ever_seen: bool) -> str:
    """Why a followed ref is not in its repository: not pushed yet, or deleted."""
    if not ever_seen:
        return (
            f"waiting for the first push to {ref!r} (the repository has no {ref!r} yet): "
            f"git push <remote> HEAD:{ref}"
        )
    return f"{ref!r} is gone from the repository (deleted?); the running version keeps serving"


class Follower:
    def __init__(
        self,
        db: StateDB,
        enqueue: Callable[[ProjectId], None],
        *,
        nudge_dir: Path,
        poll: float = 60.0,
        default_runtime: RuntimeName = RuntimeName.PROCESS,
        watch: bool = True,
        git_debounce: float = 0.01,
        dir_debounce: float = 0.5,
        on_check: Callable[[str], None] = lambda _result: None,
        on_desired_nudge: Callable[[], None] | None = None,
        on_nudge: Callable[[ProjectId], None] = lambda _project: None,
        on_secrets: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_secrets = on_secrets  # a secret was set or deleted
        self.on_nudge = on_nudge  # a project's webhook (its branch previews are checked too)
        self.db = db
        self.enqueue = enqueue
        self.nudge_dir = nudge_dir
        self.poll = poll
        self.default_runtime = default_runtime
        self.use_watch = watch
        self.on_desired_nudge = on_desired_nudge  # the configuration repo's webhook
        self.on_check = on_check  # each check's result: moved, same, failed
        self._targets: dict[ProjectId, Target] = {}
        # a failed check is tried again sooner than the poll: 2, 4 ... 256 times MIN_RETRY
        self._backoff = RateLimiter(base=2 * MIN_RETRY, cap=256 * MIN_RETRY)
        self._lock = threading.Lock()
        # the checks to make, each when it is due; one check of a project at a time
        self._checks: WorkQueue[ProjectId] = WorkQueue()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="follow-check")
        self._observer = Observer()
        self._watches: dict[tuple[str, bool], tuple[ObservedWatch | None, set[ProjectId]]] = {}
        self._git_events: Debouncer[ProjectId] = Debouncer(
            self.check_soon, delay=git_debounce, max_wait=git_debounce * 10
        )
        self._dir_events: Debouncer[ProjectId] = Debouncer(
            self.check_soon, delay=dir_debounce, max_wait=dir_debounce * 10
        )
        self._thread = threading.Thread(target=self._run, name="follow", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._git_events.start()
        self._dir_events.start()
        if self.use_watch:
            self.nudge_dir.mkdir(parents=True, exist_ok=True)
            self._observer.schedule(
                _Events(self, str(self.nudge_dir)), str(self.nudge_dir), event_filter=CHANGES
            )
            self._observer.start()
        self._thread.start()
        self.take_nudges()

    def stop(self) -> None:
        self._checks.close()
        if self.use_watch:
            self._observer.stop()
            self._observer.join(5)
        self._git_events.close()
        self._dir_events.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._thread.join(5)

    # -- what is followed ------------------------------------------------------------------

    def track(self, project_id: ProjectId, spec: ProjectSpec | None, desired: Path | None) -> None:
        """Called with each project's spec as the controller reads it."""
        try:
            target = target_for(
                spec, desired, default_poll=self.poll, default_runtime=self.default_runtime
            )
        except Exception:  # a spec the follower cannot place is the build's to report
            logger.exception("%s: cannot follow its source", project_id)
            target = None
        with self._lock:
            old = self._targets.get(project_id)
            if old == target:
                return
            if target is None:
                del self._targets[project_id]
            else:
                self._targets[project_id] = target
        self._backoff.forget(project_id)
        if old is not None:
            self._unwatch(project_id, old)
        if target is None:
            logger.info("%s: no longer follows its source", project_id)
            self.db.forget_source(project_id)
            return
        what = f"{target.location} {target.ref}" if target.kind == "git" else target.location
        logger.info("%s: follows %s", project_id, what)
        self._watch(project_id, target)
        self.check_soon(project_id)

    def targets(self) -> dict[ProjectId, Target]:
        with self._lock:
            return dict(self._targets)

    def _watch(self, project_id: ProjectId, target: Target) -> None:
        if not self.use_watch:
            return
        for path, recursive in target.watch:
            key = (path, recursive)
            with self._lock:
                entry = self._watches.get(key)
                if entry is not None:
                    entry[1].add(project_id)
                    continue
            try:
                handle: ObservedWatch | None = self._observer.schedule(
                    _Events(self, path), path, recursive=recursive, event_filter=CHANGES
                )
            except OSError as exc:
                logger.warning("%s: cannot watch %s (%s); polling it", project_id, path, exc)
                handle = None
            with self._lock:
                self._watches[key] = (handle, {project_id})

    def _unwatch(self, project_id: ProjectId, target: Target) -> None:
        for key in target.watch:
            with self._lock:
                entry = self._watches.get(key)
                if entry is None:
                    continue
                entry[1].discard(project_id)
                if entry[1]:
                    continue
                del self._watches[key]
            if entry[0] is not None:
                with contextlib.suppress(KeyError, OSError):
                    self._observer.unschedule(entry[0])

    # -- events ----------------------------------------------------------------------------

    def changed(self, root: str) -> None:
        """A watched path changed: debounce the projects that watch it."""
        if root == str(self.nudge_dir):
            self.take_nudges()
            return
        with self._lock:
            entries = [ids for (path, _r), (_h, ids) in self._watches.items() if path == root]
            kinds = {project: self._targets[project].kind for ids in entries for project in ids
                     if project in self._targets}  # fmt: skip
        for project_id, kind in kinds.items():
            (self._git_events if kind == "git" else self._dir_events).touch(project_id)

    def take_nudges(self) -> None:
        """Webhook nudges: one file per project in the nudge dir; each is a check now."""
        try:
            names = os.listdir(self.nudge_dir)
        except OSError:
            return
        for name in names:
            if name == SECRETS:
                with contextlib.suppress(OSError):
                    os.unlink(self.nudge_dir / name)
                self.on_secrets()
                continue
            if name == DESIRED and self.on_desired_nudge is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.nudge_dir / name)
                self.on_desired_nudge()
                continue
            try:
                project_id = check_project_id(name)
            except InvalidProjectId:
                continue
            with contextlib.suppress(OSError):
                os.unlink(self.nudge_dir / name)
            self.check_soon(project_id)
            self.on_nudge(project_id)

    def check_soon(self, project_id: ProjectId) -> None:
        self._checks.add(project_id)

    def _run(self) -> None:
        while True:
            project_id = self._checks.get()
            if project_id is None:  # closed
                return
            with self._lock:
                followed = project_id in self._targets
            if not followed:
                self._checks.done(project_id)
                continue
            try:
                self._pool.submit(self._check, project_id)
            except RuntimeError:  # shut down
                return

    def _check(self, project_id: ProjectId) -> None:
        try:
            self.check(project_id)
        finally:
            self._checks.done(project_id)

    def check(self, project_id: ProjectId) -> bool:
        """Read where the project's source stands now and record it; queue the project when
        it moved. True when it moved."""
        with self._lock:
            target = self._targets.get(project_id)
        if target is None:
            return False
        old = self.db.source(project_id)
        old_rev = old.rev if old is not None else None
        try:
            if target.kind == "git":
                assert target.ref is not None
                found = ls_remote(target.location, target.ref)
                if found is None:
                    raise GitError(missing_ref(target.ref, ever_seen=old_rev is not None))
                rev, detail = found[0], {"ref": found[1]}
            else:
                rev, detail = fingerprint(Path(target.location), target.output), None
        except Exception as exc:  # GitError, PermanentError, OSError: recorded, retried
            moved = self.db.set_source(project_id, rev=old_rev, error=str(exc))
            if moved:
                logger.warning("%s: cannot read its source: %s", project_id, exc)
            self._checks.add(project_id, min(target.poll, self._backoff.when(project_id)))
            self.on_check("failed")
            return False
        self._backoff.forget(project_id)
        moved = self.db.set_source(project_id, rev=rev, detail=detail, error=None)
        self._checks.add(project_id, target.poll)
        self.on_check("moved" if rev != old_rev else "same")
        if moved and rev != old_rev:
            shown = rev[:12] if target.kind == "git" else rev
            logger.info("%s: source moved to %s", project_id, shown)
            what = f"push: {shown}" if target.kind == "git" else f"source changed: {shown}"
            self.db.note_trigger(project_id, what, keep=old_rev is not None)
            self.enqueue(project_id)
        elif moved:
            self.enqueue(project_id)  # an error cleared: the status says so
        return moved and rev != old_rev


class ConfigFollower:
    """The daemon's side: fetch the configuration repository every ``poll`` seconds and when
    nudged (its webhook), and tell ``changed`` which desired files each applied commit
    touched, whoever applied it (this thread, or the API after a write: ``current`` is
    watched)."""

    def __init__(
        self,
        repo: ConfigRepo,
        changed: Callable[[tuple[str, ...] | None], None],
        *,
        poll: float = 60.0,
        watch: bool = True,
    ) -> None:
        self.repo = repo
        self.changed = changed
        self.poll = poll
        self.watch = watch
        self._applied = repo.head()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seen_lock = threading.Lock()
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="desired-git", daemon=True)
        self._observer: object | None = None

    def first_sync(self, stopping: threading.Event) -> None:
        """Before anything reads the desired dir: apply the ref's commit. Without one applied
        yet, wait for it (retrying with backoff): an empty desired dir would stop every site.
        With one applied already, a failure is logged and the daemon goes on with it."""
        delay = 2.0
        while True:
            try:
                self.repo.sync()
                self._applied = self.repo.head()
                return
            except (GitError, OSError) as exc:
                if self.repo.head() is not None:
                    logger.warning(
                        "desired state: cannot fetch %s (%s); applying %s until it can",
                        redact(self.repo.url), exc, self.repo.head(),
                    )  # fmt: skip
                    self._applied = self.repo.head()
                    return
                logger.error(
                    "desired state: cannot fetch %s: %s; nothing is applied until it can "
                    "(again in %.0f s)", redact(self.repo.url), exc, delay,
                )  # fmt: skip
            if stopping.wait(delay):
                return
            delay = min(60.0, delay * 2)

    def start(self) -> None:
        if self.watch:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer

            follower = self

            class _Flip(FileSystemEventHandler):
                def on_any_event(self, event: FileSystemEvent) -> None:
                    if os.fsdecode(getattr(event, "dest_path", "") or event.src_path).endswith(
                        "/current"
                    ):
                        follower.notice()

            observer = Observer()
            observer.schedule(_Flip(), str(self.repo.root), event_filter=CHANGES)
            observer.start()
            self._observer = observer
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()  # type: ignore[attr-defined]
            self._observer.join(5)  # type: ignore[attr-defined]
        self._thread.join(5)

    def nudge(self) -> None:
        """Fetch now (a webhook said the ref moved)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.repo.sync()
                if self._last_error is not None:
                    logger.info("desired state: %s can be fetched again", redact(self.repo.url))
                self._last_error = None
            except (GitError, OSError) as exc:
                if str(exc) != self._last_error:
                    logger.warning("desired state: cannot fetch: %s; %s stays applied", exc,
                                   (self.repo.head() or "nothing")[:12])  # fmt: skip
                self._last_error = str(exc)
            self.notice()

    def notice(self) -> None:
        """``current`` may have moved: report the files the move changed, once."""
        with self._seen_lock:
            head = self.repo.head()
            if head is None or head == self._applied:
                return
            old, self._applied = self._applied, head
        self.changed(self.repo.changed_files(old, head) if old is not None else None)
