"""Fixtures shared by the integration tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PYTHON, REPO, free_port
from tests.integration.harness import Env, environment, wait_for


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Env, str]]:
    with environment(tmp_path) as env:
        env.desired.mkdir(parents=True)
        port = free_port()
        args = [
            PYTHON, "-m", "reconciler", "run", "--listen", f"127.0.0.1:{port}",
            "--desired", str(env.desired), "--data", str(env.data),
            "--port-range", f"{env.first_port}-{env.first_port + 199}", "--edge", "off",
        ]  # fmt: skip
        log = open(tmp_path / "run.log", "ab")  # noqa: SIM115
        env.proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200, 20, "API up")
        yield env, base
        if env.proc is not None:  # a test may have stopped it
            env.terminate()
