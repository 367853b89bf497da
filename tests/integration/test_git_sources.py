"""Git sources with real git: a bare remote on this host, commits pushed to it, a daemon that
builds each one from a clean checkout and says which commit runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.client import LocalClient
from reconciler.kinds import EdgeMode
from tests.integration.gitrepo import Repo, git
from tests.integration.harness import Env, environment, get, wait_for

pytestmark = pytest.mark.timeout(180)


def git_yaml(
    remote: Path | str, *, ref: str = "main", follow: bool = True, generation: int = 1,
    extra: str = "",
) -> str:  # fmt: skip
    return (
        f"source:\n  git: {remote}\n  ref: {ref}\nruntime: process\n"
        f"production:\n  state: running\n  generation: {generation}\n"
        f"  follow: {'true' if follow else 'false'}\n"
        f"health:\n  timeout: 20\n  interval: 0.2\n{extra}"
    )


def serving(env: Env, project: str, text: str, timeout: float = 30) -> str:
    """Until the project serves ``text``; the commit its status names."""
    ops = LocalClient(env.desired, env.data)

    def check() -> str | None:
        row = env.row(project)
        if row is None or row.productionStatus != "running" or row.productionPort is None:
            return None
        body = get(f"http://127.0.0.1:{row.productionPort}/")
        if body is None or text not in body:
            return None
        return ops.status(project).get("commit")  # type: ignore[no-any-return]

    return wait_for(check, timeout, f"{project} to serve {text!r}")  # type: ignore[no-any-return]


@pytest.mark.parametrize("edge", [EdgeMode.OFF, EdgeMode.ON])
def test_each_pushed_commit_deploys_in_order(tmp_path: Path, edge: EdgeMode) -> None:
    repo = Repo(tmp_path / "repo")
    first = repo.site("one", "first page")
    with environment(tmp_path, edge=edge) as env:
        env.start()
        env.write("www", git_yaml(repo.remote))
        assert serving(env, "www", "one") == first
        ops = LocalClient(env.desired, env.data)
        status = ops.status("www")
        assert status["subject"] == "first page"
        assert status["source"]["tip"] == first and status["source"]["error"] is None

        # uncommitted junk in the remote's neighbourhood never reaches a release: the build
        # gets a clean checkout (no .git, nothing untracked)
        (repo.work / "dist" / "junk.html").write_text("untracked")
        second = repo.site("two", "second page")
        assert serving(env, "www", "two") == second
        row = env.row("www")
        assert row is not None
        dist = env.data / "production" / "www" / str(row.productionHash) / "dist"
        assert sorted(p.name for p in dist.iterdir()) == ["index.html"]
        third = repo.site("three", "third page")
        assert serving(env, "www", "three") == third

        # a broken commit (no dist/): the build fails, the last good commit keeps serving
        broken = repo.commit({"dist/index.html": None}, "broken: no page")
        repo.push()
        failed = wait_for(
            lambda: (s := ops.status("www"))["status"] == "failed" and s, 30, "the build failed"
        )
        assert "dist/ does not exist" in failed["error"]
        assert failed["commit"] == third and failed["source"]["tip"] == broken
        assert get(f"http://127.0.0.1:{failed['port']}/") == "<p>three</p>\n"

        # a fix after it deploys
        fixed = repo.site("four", "fixed")
        assert serving(env, "www", "four") == fixed

        # a force-push back to the first commit: that commit runs again (same content, so
        # the same release)
        repo.push(force=True, ref=first)
        assert serving(env, "www", "one") == first
        history = ops.history("www")["versions"]
        active = [v for v in history if v["isActive"]]
        assert active[0]["commit"] == first and active[0]["subject"] == "first page"

        # the branch deleted: recorded, and what runs keeps running
        git("config", "receive.denyDeleteCurrent", "ignore", cwd=repo.remote)
        git("push", "--quiet", "origin", ":refs/heads/main", cwd=repo.work)
        gone = wait_for(
            lambda: (s := ops.status("www"))["source"]["error"] and s, 70, "the error recorded"
        )
        assert "gone" in gone["source"]["error"]
        assert gone["status"] == "running" and gone["commit"] == first
        assert get(f"http://127.0.0.1:{gone['port']}/") == "<p>one</p>\n"


def test_without_follow_a_push_waits_for_a_deploy(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    first = repo.site("one", "first")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", git_yaml(repo.remote, follow=False))
        assert serving(env, "www", "one") == first
        repo.site("two", "second")
        env.resync_and_wait("www")
        row = env.row("www")
        assert row is not None and get(f"http://127.0.0.1:{row.productionPort}/") == "<p>one</p>\n"
        ops = LocalClient(env.desired, env.data)
        ops.deploy("www")
        assert serving(env, "www", "two") != first


def test_a_pinned_version_stops_following_until_removed(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.site("one", "first")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", git_yaml(repo.remote))
        serving(env, "www", "one")
        row = env.row("www")
        assert row is not None and row.productionHash is not None
        pinned = row.productionHash
        env.write("www", git_yaml(repo.remote).replace("  generation: 1\n",
                  f"  generation: 1\n  version: {pinned}\n"))  # fmt: skip
        two = repo.site("two", "second")
        wait_for(lambda: (s := env.db.source("www")) is not None and s.rev == two, 20, "tip seen")
        env.resync_and_wait("www")
        assert get(f"http://127.0.0.1:{row.productionPort}/") == "<p>one</p>\n"
        env.write("www", git_yaml(repo.remote))  # pin removed: follows again
        assert serving(env, "www", "two") == two


def test_a_fetch_failure_is_transient_and_names_gits_reason(tmp_path: Path) -> None:
    with environment(tmp_path) as env:
        env.start()
        env.write("www", git_yaml(tmp_path / "nowhere.git"))
        row = env.wait_status("www", "error")
        assert row.productionError is not None
        assert "does not appear to be a git repository" in row.productionError
        # then the repository appears: the retry deploys it
        repo = Repo(tmp_path / "later")
        sha = repo.site("late", "late")
        env.write("www", git_yaml(repo.remote, generation=2))
        assert serving(env, "www", "late") == sha
