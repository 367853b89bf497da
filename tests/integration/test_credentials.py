"""Credentials in git URLs, in every form, never shown or kept in the clear: a real daemon
(its own process, its own log) fails to fetch from each form, and every output and file
is searched for the secrets: status, events, jobs, deployments, the API's answers, the
daemon's log, and the files of the data dir (only the state database holds the URLs as
written, for the next fetch, and it is the owner's alone)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler.api.app import create_app
from tests.integration.harness import environment

pytestmark = pytest.mark.timeout(120)

SECRETS = {
    "userinfo": ("https://alice:pw-Secret1x@127.0.0.1:9/r.git", "pw-Secret1x"),
    "query": ("https://127.0.0.1:9/r.git?token=tok-Secret2x", "tok-Secret2x"),
    "token-user": ("https://tok-Secret3x@127.0.0.1:9/r.git", "tok-Secret3x"),
    "scp": ("bob:pw-Secret4x@127.0.0.1:r.git", "pw-Secret4x"),
    "ssh": ("ssh://carol:pw-Secret5x@127.0.0.1:9/r.git", "pw-Secret5x"),
    "encoded": ("https://dave:pw%40Secret6x@127.0.0.1:9/r.git", "Secret6x"),
    "query-among-others": (
        "https://127.0.0.1:9/r.git?a=1&private_token=tok-Secret7x&b=2",
        "tok-Secret7x",
    ),
    "git-protocol": ("git://eve:pw-Secret8x@127.0.0.1:9/r.git", "pw-Secret8x"),
    "plain-http": ("http://frank:pw-Secret9x@127.0.0.1:9/r.git", "pw-Secret9x"),
    "token-then-placeholder": (
        "https://tok-Secret10x:x-oauth-basic@127.0.0.1:9/r.git",
        "tok-Secret10x",
    ),
}


def _yaml(url: str) -> str:
    return (
        f"source:\n  git: '{url}'\n  ref: main\nruntime: process\n"
        "production:\n  state: running\n  generation: 1\n"
    )


def test_no_credential_form_is_shown_or_kept_in_the_clear(tmp_path: Path) -> None:
    with environment(tmp_path) as env:
        env.spawn()
        env.wait_ready(60)
        for name, (url, _secret) in SECRETS.items():
            env.write(name, _yaml(url))
        for name in SECRETS:
            env.wait_status(name, "error", timeout=60)
        api = create_app(env.config()).test_client()
        said = [api.get(path).get_data(as_text=True) for path in ("/api/projects", "/metrics")]
        for name in SECRETS:
            for path in ("production", "deployments", "history", "production-history",
                         "events", "production-logs?log=build"):  # fmt: skip
                said.append(api.get(f"/api/projects/{name}/{path}").get_data(as_text=True))
        db = env.db
        for table in ("projects", "events", "jobs", "deployments", "sources"):
            rows = db.read(f"SELECT * FROM {table}")
            # every column but the spec kept for the next fetch (checked below)
            said += [
                f"{table}: { {k: r[k] for k in r.keys() if k != 'lastGoodSpec'} }"  # noqa: SIM118
                for r in rows
            ]
        env.terminate()
        said.append((env.root / "daemon.log").read_text())
        shown = "\n".join(said)
        assert shown.count("Fetching main from") >= len(SECRETS), "the fetches are said"
        for name, (_url, secret) in SECRETS.items():
            leaks = [line for line in shown.splitlines() if secret in line]
            assert not leaks, f"{name}: {secret} shown in {leaks[:3]}"
        for path in env.data.rglob("*"):
            if path.is_file() and path.name not in ("state.db", "state.db-wal", "state.db-shm"):
                data = path.read_bytes()
                assert not any(s.encode() in data for _u, s in SECRETS.values()), path
        assert stat.S_IMODE(os.stat(env.data).st_mode) == 0o700
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            if (env.data / name).exists():
                assert stat.S_IMODE(os.stat(env.data / name).st_mode) == 0o600, name
