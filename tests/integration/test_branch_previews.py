"""Branch previews of a git source, with real git: a branch matching ``previews.branches``
is built and served at its own address, follows its pushes, and is removed with its
releases and records when the branch is deleted; an open request's branch too, until the
forge says it is closed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core.kinds import EdgeMode
from reconciler.core.spec import ProjectId
from reconciler.sources.hooks import Request, note_request
from reconciler.sources.previews import preview_id
from tests.integration.gitrepo import Repo, git
from tests.integration.harness import Env, environment, get, wait_for
from tests.integration.test_git_sources import git_yaml

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with environment(tmp_path, edge=EdgeMode.ON, extra_config={"git_poll": 1.0}) as e:
        e.start()
        yield e


def push_branch(repo: Repo, branch: str, text: str) -> None:
    git("checkout", "--quiet", "-B", branch, cwd=repo.work)
    repo.commit({"dist/index.html": f"<p>{text}</p>\n"}, text)
    git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}", cwd=repo.work)


def answers(env: Env, project: str) -> str | None:
    row = env.row(project)
    if row is None or row.productionStatus != "running" or row.productionPort is None:
        return None
    return get(f"http://127.0.0.1:{row.productionPort}/")


def test_a_branch_preview_is_made_updated_and_removed_by_pushes(env: Env, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.site("production", "first")
    previews = "previews:\n  branches: [feature/*]\n"
    relative = os.path.relpath(repo.remote, env.desired)  # beside the project's file
    env.write("web", git_yaml(relative, extra=previews))
    wait_for(lambda: answers(env, "web") == "<p>production</p>\n", 60, "production")

    push_branch(repo, "feature/login", "login form")
    push_branch(repo, "other", "not previewed")
    preview = preview_id(ProjectId("web"), "feature/login")
    assert preview.startswith("web--feature-login-")
    wait_for(lambda: answers(env, preview) == "<p>login form</p>\n", 60, "the preview")
    row = env.row(preview)
    assert row is not None and row.productionPort != env.row("web").productionPort  # type: ignore[union-attr]
    assert answers(env, "web") == "<p>production</p>\n", "production is untouched"
    assert not any("other" in name for name in os.listdir(env.data / "previews" / "desired"))
    releases = env.data / "production" / preview
    assert releases.is_dir()

    push_branch(repo, "feature/login", "login form, fixed")  # it follows its branch
    wait_for(lambda: answers(env, preview) == "<p>login form, fixed</p>\n", 60, "the update")

    git("push", "--quiet", "origin", ":refs/heads/feature/login", cwd=repo.work)
    wait_for(lambda: env.row(preview) is None, 60, "the preview forgotten")
    assert not releases.exists(), "its releases went with it"
    assert not (env.data / "previews" / "desired" / f"{preview}.yaml").exists()
    assert answers(env, "web") == "<p>production</p>\n"


def test_an_open_request_is_previewed_until_it_is_closed(env: Env, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.site("production", "first")
    env.write("web", git_yaml(repo.remote, extra="previews:\n  requests: true\n"))
    wait_for(lambda: answers(env, "web") == "<p>production</p>\n", 60, "production")
    push_branch(repo, "fix-typo", "typo fixed")
    preview = preview_id(ProjectId("web"), "fix-typo")
    assert preview == "web--fix-typo"
    requests = env.data / "previews" / "requests"
    note_request(requests, "web", Request(7, "fix-typo", True))  # as the webhook does
    wait_for(lambda: answers(env, preview) == "<p>typo fixed</p>\n", 60, "the request's preview")
    note_request(requests, "web", Request(7, "fix-typo", False))  # closed (the branch stays)
    wait_for(lambda: env.row(preview) is None, 60, "the preview removed")
