"""The desired files from a git repository (--desired-git) with real git: commits applied as a
whole, API writes pushed back as commits, a concurrent push racing them, a remote that
refuses."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from reconciler.api.app import create_app
from reconciler.cli.client import LocalClient
from reconciler.readside.operations import ErrorKind, OperationError
from reconciler.readside.views import in_progress
from reconciler.sources import hooks
from reconciler.stores.desired.git import ConfigRepo
from tests.integration.gitrepo import Repo, git
from tests.integration.harness import Env, environment, get, wait_for

pytestmark = pytest.mark.timeout(180)


def site(root: Path, text: str) -> Path:
    (root / "dist").mkdir(parents=True, exist_ok=True)
    (root / "dist" / "index.html").write_text(f"<p>{text}</p>\n")
    return root


def spec(source: Path, generation: int = 1, state: str = "running") -> str:
    return (
        f"# production site\nsource: {source}\nruntime: process\n"
        f"production:\n  state: {state}\n  generation: {generation}\n"
        "health:\n  timeout: 20\n  interval: 0.2\n"
    )


def one_site(tmp_path: Path) -> tuple[Path, Repo]:
    """A static site and a configuration repository whose one desired file runs it."""
    a = site(tmp_path / "a", "a1")
    repo = Repo(tmp_path / "config")
    repo.commit({"www.yaml": spec(a)}, "add www")
    repo.push()
    return a, repo


def git_env(tmp_path: Path, repo: Repo, **options: object) -> object:
    extra = {"desired_git": str(repo.remote), "desired_git_poll": 0.3,
             "git_author": "Deploy Bot <deploy@example.com>"}  # fmt: skip
    return environment(tmp_path, extra_config=extra, **options)


def serves(env: Env, project: str, text: str, timeout: float = 30) -> None:
    def check() -> bool:
        row = env.row(project)
        if row is None or row.productionStatus != "running" or row.productionPort is None:
            return False
        body = get(f"http://127.0.0.1:{row.productionPort}/")
        return body is not None and text in body

    wait_for(check, timeout, f"{project} to serve {text!r}")


def remote_log(repo: Repo) -> list[str]:
    return git("--git-dir", str(repo.remote), "log", "--format=%an <%ae>|%s", repo.branch).split(
        "\n"
    )


def test_commits_apply_as_a_whole_and_api_writes_are_pushed(tmp_path: Path) -> None:
    a, b = site(tmp_path / "a", "a1"), site(tmp_path / "b", "b1")
    repo = Repo(tmp_path / "config")
    repo.commit({"www.yaml": spec(a)}, "add www")
    repo.push()
    with git_env(tmp_path, repo) as env:  # type: ignore[attr-defined]
        env.start()
        serves(env, "www", "a1")
        store = ConfigRepo.from_data_dir(env.data)
        assert store is not None and store.head() == git("rev-parse", "HEAD", cwd=repo.work)

        # one commit touching two files (a new project and a bumped one): applied as one
        site(a, "a2")
        sha = repo.commit({"www.yaml": spec(a, 2), "blog.yaml": spec(b)}, "www v2, add blog")
        repo.push()
        serves(env, "www", "a2")
        serves(env, "blog", "b1")
        assert store.head() == sha

        # an API write is a commit pushed to the remote, named for what it does
        api = create_app(env.config()).test_client()
        site(a, "a3")
        response = api.post("/api/projects/www/deploy", json={})
        assert response.status_code == 200, response.json
        assert (
            remote_log(repo)[0]
            == "Deploy Bot <deploy@example.com>|deploy www: state running, version latest, generation 3"
        )
        serves(env, "www", "a3")
        # the comment and layout of the file survive the edit
        text = git("--git-dir", str(repo.remote), "show", f"{repo.branch}:www.yaml")
        assert text.startswith("# production site\n") and "generation: 3" in text

        # the CLI writes the same way (the daemon's settings say where)
        LocalClient(env.desired, env.data).stop("blog")
        assert remote_log(repo)[0].endswith("|stop blog: state stopped")
        env.wait_status("blog", "stopped")

        # an invalid commit changes nothing: the last good desired state stays in force
        git("pull", "--quiet", "--rebase", "origin", repo.branch, cwd=repo.work)
        repo.commit({"www.yaml": "source: [\n"}, "broken yaml")
        repo.push()
        wait_for(
            lambda: LocalClient(env.desired, env.data).status("www")["status"] == "running"
            and "YAML syntax" in str(LocalClient(env.desired, env.data).projects()),
            20, "the broken file reported",
        )  # fmt: skip
        serves(env, "www", "a3")


def test_a_concurrent_push_is_rebased_over_and_a_refusal_is_409(tmp_path: Path) -> None:
    a, b = site(tmp_path / "a", "a1"), site(tmp_path / "b", "b1")
    repo = Repo(tmp_path / "config")
    repo.commit({"www.yaml": spec(a), "blog.yaml": spec(b)}, "two sites")
    repo.push()
    with git_env(tmp_path, repo) as env:  # type: ignore[attr-defined]
        env.start()
        serves(env, "www", "a1")
        api = create_app(env.config())
        ops = api.extensions["reconciler"]
        committer = ops.desired.committer
        assert committer is not None

        # someone pushes between the write's fetch and its push: the push is refused as
        # not fast-forward, and the write is made again on the new tip
        original = committer._fetch
        raced = []

        def fetch_then_race() -> str:
            sha = original()
            if not raced:
                raced.append(repo.commit({"blog.yaml": spec(b, 5)}, "blog by hand"))
                repo.push()
            return sha

        committer._fetch = fetch_then_race  # type: ignore[method-assign]
        response = api.test_client().post("/api/projects/www/deploy", json={})
        assert response.status_code == 200, response.json
        log = remote_log(repo)
        assert [line.split("|")[1] for line in log[:2]] == [
            "deploy www: state running, version latest, generation 2",
            "blog by hand",
        ]  # neither write is lost
        committer._fetch = original  # type: ignore[method-assign]
        # that deploy ends first: a deploy asked while one is queued or building joins it
        wait_for(
            lambda: (
                (row := env.row("www")) is not None
                and row.observedGeneration == 2
                and not in_progress(ops.status_of("www"))
            ),
            what="the deploy applied",
        )

        # a remote that refuses every push: 409 with git's reason; nothing changes here
        hook = repo.remote / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'pushes are frozen for the release' >&2\nexit 1\n")
        hook.chmod(hook.stat().st_mode | stat.S_IEXEC)
        head = committer.head()
        before = (committer.current / "www.yaml").read_text()
        response = api.test_client().post("/api/projects/www/deploy", json={})
        assert response.status_code == 409
        assert "pushes are frozen for the release" in response.json["error"]  # type: ignore[index]
        assert committer.head() == head
        assert (committer.current / "www.yaml").read_text() == before
        os.unlink(hook)


def test_without_a_reachable_repository_nothing_is_stopped(tmp_path: Path) -> None:
    """A daemon that applied a commit once keeps it when the remote is gone."""
    _a, repo = one_site(tmp_path)
    with git_env(tmp_path, repo) as env:  # type: ignore[attr-defined]
        env.start()
        serves(env, "www", "a1")
        env.stop()
        repo.remote.rename(tmp_path / "moved.git")
        env.start()
        env.resync_and_wait("www")
        serves(env, "www", "a1")
        row = env.row("www")
        assert row is not None and row.productionStatus == "running"
        assert httpx.get(f"http://127.0.0.1:{row.productionPort}/").status_code == 200


def test_api_write_in_git_mode_with_a_missing_project_is_404(tmp_path: Path) -> None:
    _a, repo = one_site(tmp_path)
    with git_env(tmp_path, repo) as env:  # type: ignore[attr-defined]
        env.start()
        serves(env, "www", "a1")
        ops = LocalClient(env.desired, env.data)
        with pytest.raises(OperationError) as info:
            ops.deploy("nope")
        assert info.value.kind == ErrorKind.NOT_FOUND


def test_the_configuration_webhook_fetches_at_once(tmp_path: Path) -> None:
    a, repo = one_site(tmp_path)
    extra = {"desired_git": str(repo.remote), "desired_git_poll": 3600.0}
    with environment(tmp_path, extra_config=extra) as env:
        env.start()
        serves(env, "www", "a1")
        api = create_app(env.config()).test_client()
        secret = hooks.make_secret(env.config().hook_secret_dir, hooks.DESIRED)
        site(a, "a2")
        sha = repo.commit({"www.yaml": spec(a, 2)}, "www v2")
        repo.push()
        body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
        unsigned = api.post("/api/hooks/desired", data=body, headers={"X-GitHub-Event": "push"})
        assert unsigned.status_code == 401
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        response = api.post("/api/hooks/desired", data=body, headers={
            "X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={signature}"})  # fmt: skip
        assert response.status_code == 202 and response.json["accepted"]  # type: ignore[index]
        serves(env, "www", "a2", timeout=20)
