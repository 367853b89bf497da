"""Serve the API with waitress: a threaded, pure-Python production WSGI server.

Waitress (not gunicorn) because ``reconciler run`` embeds the API in the daemon's process,
which gunicorn's pre-fork model does not allow, and because it streams (SSE) from threads.
Waitress 3 flushes every write at once (``send_bytes`` defaults to 1), so event-stream lines
are not held back; the pin in pyproject keeps that version.
Threads exceed the stream cap, so open streams never take every thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

from waitress.server import create_server

from reconciler.core.config import Config, is_loopback

logger = logging.getLogger(__name__)
SPARE_THREADS = 16
# Idle or half-sent connections (slowloris) are closed after IDLE_TIMEOUT seconds of silence
# and many of them fit (CONNECTION_LIMIT) before anyone else waits; an event stream sends a
# keep-alive well within the timeout. Exposed beyond loopback, put the API behind the edge.
IDLE_TIMEOUT = 20
CONNECTION_LIMIT = 500


class TokenError(ValueError):
    pass


def load_token(path: str | None, env_value: str | None) -> str | None:
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise TokenError(f"cannot read --api-token-file {path}: {exc.strerror}") from None
        if not token:
            raise TokenError(f"--api-token-file {path} is empty")
        return token
    if env_value:
        return env_value.strip() or None
    return None


def check_exposure(config: Config, token: str | None) -> None:
    if token is None and not is_loopback(config.listen_host):
        raise TokenError(
            f"refusing to listen on {config.listen_host} without a token: anyone who can reach "
            "it could deploy and stop sites. Set RECONCILER_API_TOKEN or --api-token-file "
            "(e.g. `openssl rand -hex 32 > /etc/reconciler/api-token`), or listen on 127.0.0.1"
        )


class ApiServer:
    def __init__(self, app: Any, config: Config) -> None:
        self.server = create_server(
            app,
            host=config.listen_host,
            port=config.listen_port,
            threads=config.stream_cap + SPARE_THREADS,
            channel_timeout=IDLE_TIMEOUT,
            cleanup_interval=5,
            connection_limit=CONNECTION_LIMIT,
            # poll(), not select(): select() fails on descriptors past 1024 and would end the
            # server's loop (seen once: the API stopped answering in a long-lived process)
            asyncore_use_poll=True,
            ident="reconciler",
            clear_untrusted_proxy_headers=True,
        )
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        self.thread = threading.Thread(target=self.server.run, name="api-server", daemon=True)
        self.thread.start()
        logger.info("API listening on http://%s:%s", self.server.effective_host, self.port)

    def stop(self) -> None:
        """Close every socket from the server's own loop thread (closing them from another
        thread races its select() on a closed descriptor), then its worker threads."""
        if self.thread is None or not self.thread.is_alive():
            self.server.close()
            return

        def close_all() -> None:
            for channel in list(self.server._map.values()):
                channel.close()

        try:
            self.server.trigger.pull_trigger(close_all)
        except OSError:  # the loop ended on its own meanwhile and closed its trigger
            self.thread.join(5)
            with contextlib.suppress(Exception):
                self.server.close()
        self.thread.join(5)
        self.server.task_dispatcher.shutdown(timeout=5)
