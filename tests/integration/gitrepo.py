"""Real git repositories for the tests: a work tree that commits and pushes to a bare remote."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


class Repo:
    """``work`` commits; ``remote`` is a bare repository it pushes ``branch`` to."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.work = root / "work"
        self.remote = root / "remote.git"
        self.branch = branch
        git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(self.remote))
        git("init", "--quiet", f"--initial-branch={branch}", str(self.work))
        git("remote", "add", "origin", str(self.remote), cwd=self.work)

    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Write (or delete, for None) ``files`` and commit; the new commit's SHA."""
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "--all", "--", *files, cwd=self.work)  # only these: untracked junk stays
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def push(self, *, force: bool = False, ref: str | None = None) -> None:
        args = ["push", "--quiet"] + (["--force"] if force else [])
        git(*args, "origin", f"{ref or 'HEAD'}:refs/heads/{self.branch}", cwd=self.work)

    def site(self, text: str, message: str) -> str:
        """Commit a static site whose page says ``text``, push it; its SHA."""
        sha = self.commit({"dist/index.html": f"<p>{text}</p>\n"}, message)
        self.push()
        return sha


class GitDaemon:
    """A loopback ``git daemon`` serving every repository under ``base`` (read-only):
    a remote the daemon can only poll or be told about (nothing local to watch)."""

    def __init__(self, base: Path, port: int) -> None:
        self.base = base
        self.port = port
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
             "--listen=127.0.0.1", f"--port={port}", "--informative-errors", str(base)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def url(self, repo: Path) -> str:
        return f"git://127.0.0.1:{self.port}/{repo.relative_to(self.base)}"

    def wait(self, repo: Path, timeout: float = 10) -> None:
        from tests.integration.harness import wait_for

        wait_for(
            lambda: (
                subprocess.run(
                    ["git", "ls-remote", self.url(repo)],
                    capture_output=True,
                    timeout=10,
                    check=False,
                ).returncode
                == 0
            ),
            timeout,
            "the git daemon to come up",
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
