"""The connection to the Docker engine, and how its failures map onto our errors.

An engine that cannot be reached is a ``TransientError`` (retry with backoff; process projects
are unaffected); an API error (404, 409, a bad request) is the caller's to interpret.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import requests

from reconciler.core.errors import TransientError


def unreachable(exc: BaseException) -> TransientError:
    return TransientError(
        f"Docker engine unreachable: {exc}. Docker projects wait and retry; process projects "
        "keep running",
        delay=5,
    )


def is_unreachable(exc: BaseException) -> bool:
    """A failure to talk to the engine at all (not an answer from it)."""
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    return isinstance(exc, docker.errors.DockerException) and not isinstance(
        exc, docker.errors.APIError
    )


@contextlib.contextmanager
def engine_calls() -> Iterator[None]:
    """Map connection failures to TransientError; let API errors through."""
    try:
        yield
    except Exception as exc:
        if is_unreachable(exc):
            raise unreachable(exc) from None
        raise


class Engine:
    """One lazily opened, pinged client, reopened after the engine went away."""

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    def kwargs(self) -> dict[str, Any]:
        """Connection settings: ``base_url`` if given, else the DOCKER_* environment."""
        if self.base_url:
            return {"base_url": self.base_url}
        return dict(docker.utils.kwargs_from_env())

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                kwargs = self.kwargs()
                base_url = str(kwargs.get("base_url") or "unix:///var/run/docker.sock")
                if base_url.startswith("unix://") and not os.path.exists(base_url[7:]):
                    raise unreachable(OSError(f"no socket at {base_url[7:]}"))
                client = docker.DockerClient(timeout=60, **kwargs)
                try:
                    with engine_calls():
                        client.ping()
                except BaseException:
                    client.close()
                    raise
                self._client = client
            return self._client

    def ping(self) -> bool:
        try:
            with engine_calls():
                self.client.ping()
            return True
        except (TransientError, docker.errors.APIError):
            self.close()
            return False

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None
