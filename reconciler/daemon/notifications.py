"""Deploy notifications: webhooks told of a deploy that succeeded or failed, a rollback, and
an instance that keeps being repaired.

Targets come from the desired file (``notify:``) and the daemon's ``--notify-url`` (every
project). Each delivery is a POST of JSON (or Slack's ``{"text": ...}``) signed with the
daemon's notification secret (``data/hooks/secrets/_notify``; ``reconciler hook-secret
_notify`` shows or rotates it): ``X-Reconciler-Signature-256: sha256=<HMAC-SHA256 of the
body>``, with ``X-Reconciler-Event`` and ``X-Reconciler-Delivery``. Deliveries run on a small
thread pool, never in the reconcile: a receiver that fails is tried again with backoff a
bounded number of times, one that hangs is cut off by a timeout, and every attempt is an event
of the project (``production.notification``) and a log line.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from reconciler.controller.metrics import Finished
from reconciler.core.kinds import DeploymentKind, EventType
from reconciler.core.redact import redact
from reconciler.core.spec import NotifyTarget, ProjectId, ProjectSpec
from reconciler.core.timeutil import utcnow
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)

SECRET_NAME = "_notify"  # noqa: S105 - the name of the secret's file, not a secret
REPAIRS_REPEATED = 3  # repairs within REPAIR_WINDOW that make a "repair.repeated"
REPAIR_WINDOW = 300.0


def event_of(finished: Finished) -> str | None:
    """The notification a finished deployment makes (None: it makes none by itself)."""
    ok = finished.result == "succeeded"
    match finished.kind:
        case DeploymentKind.DEPLOY:
            return "deploy.succeeded" if ok else "deploy.failed"
        case DeploymentKind.ACTIVATE if finished.pinned is not None:
            return "rollback.succeeded" if ok else "rollback.failed"
        case DeploymentKind.WAKE if not ok:
            return "wake.failed"  # a request for a sleeping site was answered 503
        case _:
            return None


def slack_text(body: dict[str, Any]) -> str:
    project, event = body["project"], body["event"]
    where = f" at {body['url']}" if body.get("url") else ""
    commit = f" (commit {str(body['commit'])[:12]})" if body.get("commit") else ""
    match event:
        case "deploy.succeeded":
            return f"{project}: deployed {body.get('hash')}{commit}{where}"
        case "rollback.succeeded":
            return f"{project}: rolled back to {body.get('hash')}{where}"
        case "repair.repeated":
            return f"{project}: its instance died and was put back {body['repairs']} times in 5 min"
        case _:
            return f"{project}: {event.replace('.', ' ')}: {body.get('error') or 'no reason'}"


class Notifications:
    def __init__(
        self,
        db: StateDB,
        spec_of: Callable[[ProjectId], ProjectSpec | None],
        secret: Callable[[], bytes],
        *,
        defaults: Sequence[NotifyTarget] = (),
        attempts: int = 5,
        timeout: float = 5.0,
        backoff: float = 1.0,
        workers: int = 4,
    ) -> None:
        self.db = db
        self.spec_of = spec_of
        self.secret = secret
        self.defaults = list(defaults)
        self.attempts = max(1, attempts)
        self.timeout = timeout
        self.backoff = backoff
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="notify")
        self._stop = threading.Event()
        self._repairs: dict[ProjectId, collections.deque[float]] = {}
        self._last: dict[ProjectId, tuple[str, str | None]] = {}  # the last event told
        self._lock = threading.Lock()
        self.client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)

    def start(self) -> None:
        return None  # deliveries run on the pool as deployments finish

    def stop(self) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- what the daemon hears (a recorder Listener) -----------------------------------------

    def deployment_finished(self, finished: Finished) -> None:
        event = event_of(finished)
        extra: dict[str, Any] = {}
        if finished.kind == DeploymentKind.REPAIR and finished.result == "succeeded":
            count = self._repaired(finished.project)
            if count == REPAIRS_REPEATED:  # once, as the count crosses it
                event, extra = "repair.repeated", {"repairs": count}
        if event is None or self._repeated(finished.project, event, finished.error):
            return
        ready = finished.ready or {}
        body = {
            "event": event,
            "project": finished.project,
            "kind": str(finished.kind),
            "result": str(finished.result),
            "hash": ready.get("hash"),
            "url": ready.get("url"),
            "commit": ready.get("commit"),
            "subject": ready.get("subject"),
            "error": finished.error,
            "seconds": round(finished.seconds, 3),
            "at": utcnow(),
            **extra,
        }
        for target in self.targets(finished.project):
            if event in target.events:
                self._pool.submit(self._deliver, finished.project, target, body)

    def job_finished(self, *_args: object) -> None:
        return None

    def targets(self, project: ProjectId) -> list[NotifyTarget]:
        spec = self.spec_of(project)
        return [*(spec.notify if spec is not None else []), *self.defaults]

    def _repeated(self, project: ProjectId, event: str, error: str | None) -> bool:
        """The same failure again (a transient error retried with backoff fails its deploy
        each time): told once, until something else happens to the project."""
        key = (event, error if event.endswith(".failed") else None)
        with self._lock:
            last = self._last.get(project)
            self._last[project] = key
        return event.endswith(".failed") and last == key

    def _repaired(self, project: ProjectId) -> int:
        now = time.monotonic()
        with self._lock:
            times = self._repairs.setdefault(project, collections.deque())
            times.append(now)
            while times and now - times[0] > REPAIR_WINDOW:
                times.popleft()
            return len(times)

    # -- delivery ----------------------------------------------------------------------------

    def _deliver(self, project: ProjectId, target: NotifyTarget, body: dict[str, Any]) -> bool:
        payload = body if target.format == "json" else {"text": slack_text(body)}
        data = json.dumps(payload, separators=(",", ":")).encode()
        delivery = uuid.uuid4().hex
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "reconciler-notify",
            "Connection": "close",  # rare requests: a pooled connection the receiver closed
            # would only fail the next attempt
            "X-Reconciler-Event": body["event"],
            "X-Reconciler-Delivery": delivery,
            "X-Reconciler-Signature-256": "sha256="
            + hmac.new(self.secret(), data, hashlib.sha256).hexdigest(),
        }
        shown = redact(target.url)
        for attempt in range(1, self.attempts + 1):
            if self._stop.is_set():
                return False
            started = time.monotonic()
            try:
                response = self.client.post(target.url, content=data, headers=headers)
                outcome, ok = f"HTTP {response.status_code}", response.is_success
            except httpx.TimeoutException:
                outcome, ok = f"no answer within {self.timeout:g} s", False
            except httpx.HTTPError as exc:
                outcome, ok = f"{type(exc).__name__}: {exc}"[:300], False
            last = ok or attempt == self.attempts
            record = {
                "message": f"Notification {body['event']} to {shown}: "
                + ("delivered" if ok else f"failed ({outcome})")
                + ("" if ok or not last else "; giving up")
                + ("" if ok or last else "; trying again"),
                "event": body["event"], "target": shown, "delivery": delivery,
                "attempt": attempt, "delivered": ok, "outcome": outcome,
                "ms": round((time.monotonic() - started) * 1000),
            }  # fmt: skip
            try:
                self.db.append_event(project, EventType.NOTIFICATION, record)
            except Exception:
                logger.exception("%s: cannot record a notification attempt", project)
            (logger.info if ok else logger.warning)("%s: %s", project, record["message"])
            if ok:
                return True
            if not last and self._stop.wait(min(60.0, self.backoff * 2 ** (attempt - 1))):
                return False
        return False
