"""The waker: the daemon's unix socket the edge asks before it serves a sleeping site.

``GET /wake/port/<port>`` or ``GET /wake/host/<host>`` answers 204 once the site runs (the
edge then serves the request as usual), else 503 with ``Retry-After`` and what went wrong (the
edge gives that to the client). Each request is a thread of its own that waits; every request
for the same site joins the same wake (``Sleeper.wake``). ``GET /wake/preview/<id>/<version>``
starts a preview of a kept version that runs as an app (``VersionPreviews.wake``). The socket
sits in the edge's dir (0700): only the daemon and the edge reach it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from reconciler.controller.sleep import Answer, Sleeper
from reconciler.controller.versions import VersionPreviews
from reconciler.core.spec import PROJECT_ID

logger = logging.getLogger(__name__)

WAKE_PATH = re.compile(
    r"^/wake/(port)/(\d{1,5})$|^/wake/(host)/([a-z0-9.-]{1,253})$"
    rf"|^/wake/(preview)/({PROJECT_ID}/[0-9a-f]{{8}})$"
)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # many sites asked for at once (5 refused the 6th connect)
    wake: Callable[[str, str], Answer]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the edge keeps its connections to the waker open
    server: _Server

    def do_GET(self) -> None:
        found = WAKE_PATH.match(self.path)
        if found is None:
            self._answer(Answer(404, "not a wake request"))
            return
        pairs = [found.group(i, i + 1) for i in (1, 3, 5)]
        what, key = next((w, k) for w, k in pairs if w)
        try:
            answer = self.server.wake(what, key)
        except Exception:
            logger.exception("waking %s %s failed", what, key)
            answer = Answer(503, "the site could not be woken", 5)
        self._answer(answer)

    def _answer(self, answer: Answer) -> None:
        body = f"{answer.message}\n".encode() if answer.status != 204 else b""
        self.send_response(answer.status)
        if answer.retry_after is not None:
            self.send_header("Retry-After", str(answer.retry_after))
        if body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "edge"

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("waker: " + format, *args)


class Wakers:
    """A part of the daemon: the sleeping sites, the previews of app versions, and the socket
    that wakes both, listening from start to stop."""

    name = "waker"

    def __init__(self, path: Path, sleeper: Sleeper, versions: VersionPreviews) -> None:
        self.path = path
        self.sleeper = sleeper
        self.versions = versions
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def wake(self, what: str, key: str) -> Answer:
        return self.versions.wake(key) if what == "preview" else self.sleeper.wake(what, key)

    def tick(self) -> None:
        self.sleeper.tick()
        self.versions.tick()

    def start(self) -> None:
        self.versions.start()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a previous daemon's
        self.path.parent.mkdir(parents=True, exist_ok=True)
        server = _Server(str(self.path), _Handler)
        server.wake = self.wake
        os.chmod(self.path, 0o660)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="waker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.sleeper.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.versions.stop()
