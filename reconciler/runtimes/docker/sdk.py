"""The one place that reaches into the docker SDK's private parts; everything else uses its API.

A cancelled build must stop at once, but ``APIClient.build`` returns a generator over a
streaming HTTP response and offers no way to abort it. This adapter keeps that response (by
overriding the private ``_stream_helper``) and shuts its socket down, which makes the engine
cancel the build. Both reaches (``_stream_helper`` and ``response.raw._fp.fp.raw``) are
checked by ``tests/docker/test_docker_sdk.py``, which fails loudly when an SDK release moves
them.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import docker
import requests


class AbortableBuildAPI(docker.APIClient):  # type: ignore[misc]
    """An APIClient that keeps the build's streaming response, so a cancel can cut it."""

    response: requests.Response | None = None

    def _stream_helper(self, response: requests.Response, decode: bool = False) -> Any:
        self.response = response
        return super()._stream_helper(response, decode)

    def abort(self) -> bool:
        """Cut the build's connection. True when a socket was found and shut down."""
        response = self.response
        if response is None:
            return False
        cut = False
        with contextlib.suppress(Exception):
            sock = response_socket(response)
            sock.shutdown(socket.SHUT_RDWR)
            cut = True
        with contextlib.suppress(Exception):
            response.close()
        return cut


def response_socket(response: requests.Response) -> socket.socket:
    """The socket under a streaming response of the SDK's unix-socket adapter."""
    raw = response.raw._fp.fp.raw
    sock = getattr(raw, "_sock", raw)
    if not isinstance(sock, socket.socket):
        raise TypeError(f"expected a socket under the response, found {type(sock).__name__}")
    return sock
