"""The one private-API reach into the docker SDK (runtimes/docker/sdk.py), checked against the
installed SDK and a real engine: when an SDK release moves it, this fails loudly here rather
than as a build that can no longer be cancelled."""

from __future__ import annotations

import inspect
import socket
import threading
from pathlib import Path

import docker
import pytest

from reconciler.runtimes.docker.engine import Engine
from reconciler.runtimes.docker.sdk import AbortableBuildAPI, response_socket
from tests.docker.conftest import make_project
from tests.integration.harness import wait_for

SLEEPY = (
    "FROM scratch\nCOPY busybox /bin/busybox\n"
    'RUN ["/bin/busybox", "sh", "-c", "echo sdk-probe; /bin/busybox sleep 600"]\n'
)


def test_the_sdk_still_has_the_private_hook() -> None:
    helper = getattr(docker.APIClient, "_stream_helper", None)
    assert helper is not None, "docker.APIClient._stream_helper is gone: see runtimes/docker/sdk.py"
    params = list(inspect.signature(helper).parameters)
    assert params[:3] == ["self", "response", "decode"], params


@pytest.mark.docker
@pytest.mark.timeout(90)
def test_abort_cuts_a_real_build_stream(
    tmp_path: Path, docker_client: docker.DockerClient, prefix: str
) -> None:
    source = make_project(tmp_path / "src", dockerfile=SLEEPY)
    api = AbortableBuildAPI(timeout=None, version="auto", **Engine().kwargs())
    lines: list[str] = []
    ended = threading.Event()

    def consume() -> None:
        try:
            for chunk in api.build(path=str(source), tag=f"{prefix}-sdk:probe", decode=True,
                                   rm=True, forcerm=True):  # fmt: skip
                lines.append(str(chunk.get("stream", "")))
        except Exception:
            pass
        finally:
            ended.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    wait_for(lambda: any("sdk-probe" in line for line in lines), 60, "the build's output")
    assert api.response is not None, "the override no longer sees the build's response"
    assert isinstance(response_socket(api.response), socket.socket)
    assert api.abort() is True
    assert ended.wait(5), "the stream did not end after its socket was shut down"
    api.close()
    wait_for(
        lambda: not [
            c for c in docker_client.containers.list()
            if "sleep 600" in " ".join(c.attrs["Config"].get("Cmd") or [])
        ],
        20,
        "the engine to stop building after the abort",
    )  # fmt: skip
