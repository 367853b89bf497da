"""``docker build`` of a source dir, streamed line by line, cancellable and bounded in time."""

from __future__ import annotations

import threading
import time
from typing import Any

import docker.errors

from reconciler.core.errors import BuildFailed, Cancelled
from reconciler.core.spec import Limits
from reconciler.runtimes.base import BuildRequest, OutputTail, describe_seconds, with_tail
from reconciler.runtimes.docker.engine import Engine, engine_calls, is_unreachable, unreachable
from reconciler.runtimes.docker.labels import LABEL_IMAGE_OF
from reconciler.runtimes.docker.sdk import AbortableBuildAPI


def build_image(
    engine: Engine,
    request: BuildRequest,
    tag: str,
    tail: OutputTail,
    limits: Limits = Limits(),  # noqa: B008 - frozen
) -> str:
    """Build ``request.source`` as ``tag``; returns the image id.

    Raises BuildFailed (the build failed or timed out), Cancelled, or TransientError.
    """
    with engine_calls():
        engine.client  # noqa: B018 - fail fast with a clear message when the engine is down
        api = AbortableBuildAPI(timeout=None, version="auto", **engine.kwargs())
    try:
        return _stream(api, engine, request, tag, tail, limits)
    finally:
        api.close()


def build_container_limits(limits: Limits) -> dict[str, int]:
    """The build's containers' limits (the classic builder takes memory and CPU shares; a
    cpu limit of one core is 1024 shares: a weight, not a quota)."""
    found: dict[str, int] = {}
    if limits.memory is not None:
        found["memory"] = limits.memory
        found["memswap"] = limits.memory
    if limits.cpu is not None:
        found["cpushares"] = max(2, int(limits.cpu * 1024))
    return found


def _stream(
    api: AbortableBuildAPI,
    engine: Engine,
    request: BuildRequest,
    tag: str,
    tail: OutputTail,
    limits: Limits,
) -> str:
    spec = request.spec
    outcome: dict[str, Any] = {}

    def consume() -> None:
        try:
            stream = api.build(
                path=str(request.source),
                tag=tag,
                rm=True,
                forcerm=True,
                decode=True,
                buildargs=dict(spec.plain_env) or None,
                labels={LABEL_IMAGE_OF: request.project_id},
                container_limits=build_container_limits(limits) or None,
            )
            for chunk in stream:
                if "stream" in chunk:
                    tail.add(str(chunk["stream"]))
                if "error" in chunk:
                    outcome["error"] = str(chunk["error"]).strip()
                aux = chunk.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    outcome["image"] = aux["ID"]
        except Exception as exc:
            outcome["exception"] = exc

    thread = threading.Thread(
        target=consume, name=f"docker-build-{request.project_id}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + spec.build.timeout
    reason = None
    while thread.is_alive():
        if request.cancel.wait(0.05):
            reason = "cancelled"
        elif time.monotonic() > deadline:
            reason = "timeout"
        if reason:
            api.abort()
            thread.join(5)
            break
    if reason == "cancelled":
        raise Cancelled("docker build cancelled")
    if reason == "timeout":
        raise BuildFailed(
            with_tail(
                "Build failed: docker build timed out after "
                f"{describe_seconds(spec.build.timeout)}",
                tail.text(),
            )
        )
    exc = outcome.get("exception")
    if exc is not None and is_unreachable(exc):
        raise unreachable(exc)
    if exc is not None:
        raise BuildFailed(with_tail(f"Build failed: docker build: {exc}", tail.text()))
    if "error" in outcome:
        raise BuildFailed(with_tail(f"Build failed: {outcome['error']}", tail.text()))
    with engine_calls():
        try:
            image = engine.client.images.get(tag)
        except docker.errors.ImageNotFound:
            raise BuildFailed(
                with_tail("Build failed: docker build made no image", tail.text())
            ) from None
    return str(image.id)
