"""The engine's event stream: our containers that die, stop or disappear, as they happen.

When dockerd restarts, the stream ends silently: reconnect with backoff, then ask for a full
re-check (the engine may have changed anything while we were not listening). The client is
closed on every path: at the end of each connection, on errors, and when ``stop`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import docker

from reconciler.core.spec import InvalidProjectId, check_project_id
from reconciler.runtimes.base import OnChange
from reconciler.runtimes.docker.engine import Engine
from reconciler.runtimes.docker.labels import LABEL_PROJECT, MANAGED_BY, MANAGER

logger = logging.getLogger(__name__)

ACTIONS = frozenset({"die", "destroy", "stop", "kill", "oom", "start"})


def watch_events(
    engine: Engine,
    changed: OnChange,
    stop: threading.Event,
    *,
    filters: dict[str, Any] | None = None,
    project_of: Callable[[dict[str, Any]], str | None] | None = None,
    name: str = "docker-events",
    record: Callable[[dict[str, Any]], None] | None = None,
) -> threading.Thread:
    """Follow events in a thread until ``stop`` is set; returns the thread. By default our
    containers' (``filters``), each naming its project by label (``project_of``)."""
    wanted = filters or {"type": "container", "label": f"{MANAGED_BY}={MANAGER}"}
    project_of = project_of or _labelled_project
    current: list[docker.DockerClient] = []
    lock = threading.Lock()

    def close_current() -> None:
        with lock:
            clients = list(current)
            current.clear()
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()

    def close_on_stop() -> None:
        stop.wait()
        close_current()

    def follow() -> None:
        client = docker.DockerClient(timeout=30, **engine.kwargs())
        with lock:
            current.append(client)
        if stop.is_set():
            close_current()
            return
        try:
            events = client.events(decode=True, filters=wanted)
            changed(None)
            for event in events:
                if stop.is_set():
                    break
                if record is not None:
                    with contextlib.suppress(Exception):
                        record(event)
                _dispatch(event, changed, project_of)
        finally:
            close_current()

    def loop() -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                follow()
                delay = 0.5
            except Exception as exc:
                logger.debug("docker events: %s", exc)
            if stop.wait(delay):
                return
            delay = min(delay * 2, 10)

    threading.Thread(target=close_on_stop, name=f"{name}-closer", daemon=True).start()
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def _labelled_project(event: dict[str, Any]) -> str | None:
    attrs = (event.get("Actor") or {}).get("Attributes") or {}
    return attrs.get(LABEL_PROJECT)


def _dispatch(
    event: dict[str, Any], changed: OnChange, project_of: Callable[[dict[str, Any]], str | None]
) -> None:
    action = str(event.get("Action", ""))
    project = project_of(event)
    relevant = action in ACTIONS or action.startswith("health_status")
    if (relevant or event.get("Type") == "service") and project:
        with contextlib.suppress(InvalidProjectId):
            changed(check_project_id(project))
