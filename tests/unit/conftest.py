"""The API's fixtures, shared by the API's test modules: a desired dir with one project
(www), the app over it, a test client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from reconciler.api.app import create_app
from reconciler.core.config import Config
from reconciler.core.kinds import EdgeMode
from reconciler.core.spec import ProjectId
from reconciler.readside.operations import Operations
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB

SITE = """\
# the marketing site
source: ../site   # relative to this file

production:
  state: stopped   # flipped by the API
  version: latest
  generation: 3

health:
  timeout: 1
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    desired = tmp_path / "desired"
    desired.mkdir()
    (desired / "www.yaml").write_text(SITE)
    return Config(desired_dir=desired, data_dir=tmp_path / "data", stream_cap=3, edge=EdgeMode.OFF)


@pytest.fixture
def app(config: Config) -> Iterator[Flask]:
    app = create_app(config)
    svc: Operations = app.extensions["reconciler"]
    svc.poll_interval = 0.02
    svc.rollback_grace = 0.0
    # these tests write the database behind the API's back and read at once: look at it on
    # every read (the API asks at most every 2 ms, a staleness no client can see but a test
    # that writes and reads within 2 ms can)
    svc.cache.db_check_every = 0.0
    yield app
    svc.db.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def db(app: Flask) -> StateDB:
    return app.extensions["reconciler"].db  # type: ignore[no-any-return]


def stage(config: Config, html: str, tmp_path: Path, *, served: bool = True) -> str:
    """A kept version of www (``served``: one that went live once, as a rollback wants)."""
    store = ReleaseStore(config.releases_dir)
    dist = tmp_path / f"dist-{html}"
    dist.mkdir()
    (dist / "index.html").write_text(html)
    version = store.commit(store.begin(ProjectId("www")), dist=dist).hash
    if served:
        state = StateDB(config.layout.state_db)
        state.version_served("www", version)
        state.close()
    return version
