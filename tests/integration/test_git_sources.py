"""Git sources with real git: a bare remote on this host, commits pushed to it, a daemon that
builds each one from a clean checkout and says which commit runs."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
from pathlib import Path

import pytest

from reconciler.api.app import create_app
from reconciler.cli.client import LocalClient
from reconciler.core.kinds import EdgeMode, JobType
from reconciler.core.spec import ProjectId
from reconciler.sources import hooks
from tests.conftest import PYTHON, REPO, free_port
from tests.integration.gitrepo import GitDaemon, Repo, git
from tests.integration.harness import Env, desired_yaml, environment, get, wait_for

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
        assert "the source has no dist/ (build.output: dist)" in failed["error"]
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
                  f"  generation: 1\n  version: \"{pinned}\"\n"))  # fmt: skip
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


def test_a_webhook_deploys_a_push_to_a_remote_nothing_watches(tmp_path: Path) -> None:
    """A remote behind a loopback git daemon, polled once an hour: the signed webhook is what
    makes the push deploy, and a bad signature does nothing."""
    repo = Repo(tmp_path / "repo")
    first = repo.site("one", "first")
    server = GitDaemon(tmp_path / "repo", free_port())
    try:
        server.wait(repo.remote)
        with environment(tmp_path, extra_config={"git_poll": 3600.0}) as env:
            env.start()
            env.write("www", git_yaml(server.url(repo.remote)))
            assert serving(env, "www", "one") == first
            api = create_app(env.config()).test_client()
            secret = hooks.make_secret(env.config().hook_secret_dir, "www")
            second = repo.site("two", "second")
            env.resync_and_wait("www")
            row = env.row("www")
            assert row is not None and row.productionHash is not None
            assert get(f"http://127.0.0.1:{row.productionPort}/") == "<p>one</p>\n"

            body = json.dumps({"ref": "refs/heads/main", "after": second}).encode()
            bad = api.post("/api/projects/www/hooks/git", data=body, headers={
                "X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64})  # fmt: skip
            assert bad.status_code == 401
            env.resync_and_wait("www")
            assert get(f"http://127.0.0.1:{row.productionPort}/") == "<p>one</p>\n"

            signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            good = api.post("/api/projects/www/hooks/git", data=body, headers={
                "X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={signature}"})  # fmt: skip
            assert good.status_code == 202
            assert serving(env, "www", "two", timeout=20) == second
    finally:
        server.stop()


def test_a_followed_source_dir_deploys_when_it_changes(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "dist").mkdir(parents=True)
    (site / "dist" / "index.html").write_text("<p>one</p>\n")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", desired_yaml(site, extra="").replace(
            "  generation: 1\n", "  generation: 1\n  follow: true\n"))  # fmt: skip
        env.wait_serving("www", "one")
        (site / "dist" / "index.html").write_text("<p>two</p>\n")
        env.wait_serving("www", "two")
        # a burst of writes is one deploy of the last content
        for i in range(5):
            (site / "dist" / f"part{i}.html").write_text(f"{i}\n")
        (site / "dist" / "index.html").write_text("<p>three</p>\n")
        env.wait_serving("www", "three")
        row = env.row("www")
        assert row is not None and (row.built_from() or {}).get("rev", "").startswith("dir:")


def test_init_repo_then_push_deploys(tmp_path: Path) -> None:
    with environment(tmp_path) as env:
        env.desired.mkdir(parents=True)
        out = subprocess.run(
            [PYTHON, "-m", "reconciler", "init-repo", "www", "--desired", str(env.desired),
             "--data", str(env.data)],
            capture_output=True, text=True, check=True, cwd=REPO,
        ).stdout  # fmt: skip
        bare = env.data / "repos" / "www.git"
        assert "git push production HEAD:main" in out and (bare / "HEAD").is_file()
        text = (env.desired / "www.yaml").read_text()
        assert "follow: true" in text and str(bare) in text
        env.start()
        work = tmp_path / "work"
        git("init", "--quiet", "--initial-branch=main", str(work))
        (work / "dist").mkdir()
        (work / "dist" / "index.html").write_text("<p>pushed</p>\n")
        git("add", "-A", cwd=work)
        git("commit", "--quiet", "-m", "first push", cwd=work)
        git("push", "--quiet", str(bare), "HEAD:main", cwd=work)
        assert serving(env, "www", "pushed") == git("rev-parse", "HEAD", cwd=work)


def test_a_build_that_writes_into_its_followed_dir_does_not_build_again(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.html").write_text("<p>one</p>\n")
    # a build cache written on every build (a different stamp each time) and the page copied
    # again with the same bytes: neither is an edit
    build = (
        "mkdir -p dist .cache && cp page.html dist/index.html && date +%s%N > .cache/stamp && "
        "cp page.html copy.html"
    )
    with environment(tmp_path) as env:
        env.start()
        env.write("www", desired_yaml(site, extra=f"build:\n  command: {build}\n").replace(
            "  generation: 1\n", "  generation: 1\n  follow: true\n"))  # fmt: skip
        env.wait_serving("www", "one")
        (site / "page.html").write_text("<p>two</p>\n")
        env.wait_serving("www", "two")
        # an edit while a build runs is built next
        slow = "sleep 1.5; " + build
        env.write("www", desired_yaml(site, generation=2, extra=f"build:\n  command: '{slow}'\n")
                  .replace("  generation: 2\n", "  generation: 2\n  follow: true\n"))  # fmt: skip
        wait_for(lambda: any(j.type == JobType.BUILD and j.state == "running"
                             for j in env.db.jobs("www")), 20, "the slow build runs")  # fmt: skip
        (site / "page.html").write_text("<p>three</p>\n")
        env.wait_serving("www", "three")

        def settled() -> bool:
            # look at the source now, not only when the watch's debounce fires: the edit
            # above may not have been seen yet even though a build already copied it
            assert env.daemon is not None
            env.daemon.follower.check(ProjectId("www"))
            row, source = env.row("www"), env.db.source("www")
            built = (row.built_from() or {}).get("rev") if row else None
            idle = all(j.state not in ("queued", "running") for j in env.db.jobs("www"))
            return source is not None and source.rev == built and idle

        # copy.html is rewritten by each build from page.html: one more build at most
        wait_for(settled, 20, "the source and what was built agree")
        builds = len([j for j in env.db.jobs("www") if j.type == JobType.BUILD])
        # the follower has seen the build's own writes (.stamp, dist/) by now: a second
        # look at the source and a resync plan no build
        assert env.daemon is not None
        env.daemon.follower.check(ProjectId("www"))
        env.resync_and_wait("www")
        assert len([j for j in env.db.jobs("www") if j.type == JobType.BUILD]) == builds


def test_a_commit_sha_as_ref_builds_that_commit(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    first = repo.site("one", "first")
    repo.site("two", "second")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", git_yaml(repo.remote, ref=first))
        assert serving(env, "www", "one") == first
        assert env.daemon is not None and not env.daemon.follower.targets(), "a SHA never moves"


def test_a_committed_symlink_leaving_the_output_is_refused(tmp_path: Path) -> None:
    """A commit is hostile input: a symlink out of dist/ fails its deploy, never followed."""
    repo = Repo(tmp_path / "repo")
    repo.site("one", "first")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", git_yaml(repo.remote))
        serving(env, "www", "one")
        (repo.work / "dist" / "passwd").symlink_to("/etc/passwd")
        repo.commit({"dist/index.html": "<p>two</p>\n"}, "sneaky link")
        git("add", "dist/passwd", cwd=repo.work)
        git("commit", "--quiet", "--amend", "--no-edit", cwd=repo.work)
        repo.push()
        ops = LocalClient(env.desired, env.data)
        failed = wait_for(
            lambda: (s := ops.status("www"))["status"] == "failed" and s, 30, "refused"
        )
        assert "leaves dist/" in failed["error"]
        assert get(f"http://127.0.0.1:{failed['port']}/") == "<p>one</p>\n"


def test_a_lost_state_database_does_not_rebuild_the_followed_commit(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    first = repo.site("one", "first")
    with environment(tmp_path) as env:
        env.start()
        env.write("www", git_yaml(repo.remote))
        assert serving(env, "www", "one") == first
        env.stop()
        env.db.close()
        env._db = None
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (env.data / name).unlink(missing_ok=True)
        env.start()
        assert serving(env, "www", "one") == first  # the record rebuilt from the manifest
        wait_for(lambda: (s := env.db.source("www")) is not None and s.rev == first, 20, "tip")
        env.resync_and_wait("www")
        assert [j for j in env.db.jobs("www") if j.type == JobType.BUILD] == []
