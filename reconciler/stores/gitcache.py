"""Git sources: ask a remote where a ref points, fetch it into a cache, check out one commit.

Everything runs the ``git`` CLI with an argv (never a shell), a bounded time, no terminal
prompt and no ``ext::`` transport; credentials are git's own (ssh keys, credential helpers)
and a password written into a URL is never logged. Each project has its own bare cache under
``data/git/<id>.git``; builds get a fresh checkout of the exact commit, never a work tree
that could hold uncommitted files.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.errors import PermanentError, TransientError
from reconciler.core.redact import MASK, redact, scrub, secrets_of
from reconciler.core.spec import GitSource, ProjectId

logger = logging.getLogger(__name__)

TIP = "refs/reconciler/tip"
LS_TIMEOUT = 60.0
FETCH_TIMEOUT = 600.0
SHA_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str
    ref: str
    repo: str  # the repository as recorded (password removed)

    @property
    def short(self) -> str:
        return self.sha[:12]

    def record(self) -> dict[str, str]:
        return {"git": self.repo, "ref": self.ref, "commit": self.sha, "subject": self.subject}


class GitError(TransientError):
    """git failed; the message is git's own (a fetch is retried with backoff)."""


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "RECONCILER_"))}
    env.update(
        GIT_TERMINAL_PROMPT="0",  # never wait for a password on a terminal nobody watches
        GIT_SSH_COMMAND=os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
        GIT_CONFIG_NOSYSTEM="1",
        LC_ALL="C",
    )
    return env


def run_git(
    args: list[str],
    *,
    cwd: Path | None = None,
    timeout: float = FETCH_TIMEOUT,
    env: dict[str, str] | None = None,
    secret_url: str | None = None,
    check: bool = True,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run ``git args`` (argv, no shell). A failure raises GitError with git's own message
    (a password in ``secret_url`` masked)."""
    argv = ["git", "-c", "protocol.ext.allow=never", "-c", "core.hooksPath=/dev/null", *args]
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env={**git_env(), **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=text,
            errors="replace" if text else None,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} timed out after {timeout:g} s") from None
    except FileNotFoundError:
        raise PermanentError("git is not installed (apt-get install git)") from None
    if check and proc.returncode != 0:
        out = proc.stderr or proc.stdout
        out = out if isinstance(out, str) else out.decode("utf-8", "replace")
        message = out.strip() or f"exit code {proc.returncode}"
        raise GitError(f"git {args[0]}: {_mask(message, secret_url)}")
    return proc


def _mask(text: str, url: str | None) -> str:
    """git's words with credentials masked: in every URL they quote, and bare."""
    if url is not None:
        text = text.replace(url, redact(url))
        for secret in secrets_of(url):
            text = text.replace(secret, MASK)
    return scrub(text)


def candidates(ref: str) -> list[str]:
    """The full ref names ``ref`` may mean, in the order git would pick them."""
    if ref.startswith("refs/"):
        return [ref]
    return [f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"]


def ls_remote(url: str, ref: str, *, timeout: float = LS_TIMEOUT) -> tuple[str, str] | None:
    """Where ``ref`` points on the remote now: (commit, full ref name); None when the remote
    has no such ref (a deleted branch). Cheap: no objects are transferred."""
    if SHA_RE.fullmatch(ref):
        return ref, ref
    proc = run_git(["ls-remote", "--", url, *candidates(ref)], timeout=timeout, secret_url=url)
    found: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    for name in candidates(ref):
        if name in found:
            return found[name], name.removesuffix("^{}")
    return None


def ls_heads(url: str, *, timeout: float = LS_TIMEOUT) -> dict[str, str]:
    """Every branch of the remote and its commit (one ``git ls-remote --heads``)."""
    proc = run_git(["ls-remote", "--heads", "--", url], timeout=timeout, secret_url=url)
    found: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name.startswith("refs/heads/") and SHA_RE.fullmatch(sha):
            found[name.removeprefix("refs/heads/")] = sha
    return found


def checkout_tree(git_dir: Path, sha: str, dest: Path) -> None:
    """Write the tree of commit ``sha`` from ``git_dir`` into the empty dir ``dest``, with a
    throwaway index beside it: a clean tree, no ``.git``, the repository's index untouched."""
    dest.mkdir(parents=True, exist_ok=True)
    index = dest.parent / f".{dest.name}.index"
    try:
        run_git(
            [f"--git-dir={git_dir}", f"--work-tree={dest}", "read-tree", "--reset", "-u",
             f"{sha}^{{tree}}"],
            env={"GIT_INDEX_FILE": str(index)},
        )  # fmt: skip
    finally:
        index.unlink(missing_ok=True)


class GitCache:
    """A bare repository per project under ``root``, fetched into, checked out from."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path(self, project_id: ProjectId) -> Path:
        return self.root / f"{project_id}.git"

    def _lock(self, project_id: ProjectId) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(project_id, threading.Lock())

    def _ensure(self, project_id: ProjectId) -> Path:
        cache = self.path(project_id)
        if not (cache / "HEAD").is_file():
            shutil.rmtree(cache, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{project_id}-", dir=self.root))
            run_git(["init", "--quiet", "--bare", str(tmp)], timeout=30)
            os.replace(tmp, cache)
        return cache

    def fetch(self, project_id: ProjectId, source: GitSource, url: str) -> Commit:
        """Fetch ``source.ref`` from ``url`` into the project's cache; the commit it names."""
        with self._lock(project_id):
            cache = self._ensure(project_id)
            pinned = source.pinned_commit
            if pinned is not None:
                have = run_git(
                    ["cat-file", "-e", f"{pinned}^{{commit}}"], cwd=cache, timeout=30, check=False
                )
                if have.returncode != 0:
                    run_git(
                        ["fetch", "--quiet", "--no-tags", "--depth=1", "--", url, pinned],
                        cwd=cache,
                        secret_url=url,
                    )
                sha = pinned
            else:
                remote = ls_remote(url, source.ref)
                if remote is None:
                    raise GitError(
                        f"{redact(url)} has no branch or tag {source.ref!r} (deleted, or not "
                        "pushed yet); the running version keeps serving"
                    )
                run_git(
                    [
                        "fetch",
                        "--quiet",
                        "--no-tags",
                        "--force",
                        "--depth=1",
                        "--",
                        url,
                        f"+{remote[1]}:{TIP}",
                    ],  # a build needs the tree, not the history
                    cwd=cache,
                    secret_url=url,
                )
                sha = run_git(
                    ["rev-parse", "--verify", f"{TIP}^{{commit}}"], cwd=cache, timeout=30
                ).stdout.strip()
            subject = run_git(
                ["log", "-1", "--format=%s", sha, "--"], cwd=cache, timeout=30
            ).stdout.strip()
            return Commit(sha, subject[:200], source.ref, redact(url))

    def checkout(self, project_id: ProjectId, sha: str, dest: Path) -> None:
        """Write the tree of commit ``sha`` into the empty dir ``dest`` (no .git in it)."""
        with self._lock(project_id):
            checkout_tree(self._ensure(project_id), sha, dest)

    def forget(self, project_id: ProjectId) -> None:
        with self._lock(project_id):
            shutil.rmtree(self.path(project_id), ignore_errors=True)


# left out of a source dir's fingerprint: version control, dependencies and build caches (a
# build writes them; they are no edit of the source)
SKIP_DIRS = frozenset({
    ".git", "node_modules", "__pycache__", ".cache", ".next", ".nuxt", ".svelte-kit",
    ".parcel-cache", ".turbo", ".astro", ".venv",
})  # fmt: skip
MAX_FINGERPRINT_FILES = 200_000
_CONTENT: dict[str, tuple[tuple[int, int, int], str]] = {}  # path -> (identity, digest)
_CONTENT_LOCK = threading.Lock()


def _content_digest(path: str, st: os.stat_result) -> str:
    """A file's content digest, read again only when its identity (inode, size, mtime) moved."""
    import hashlib

    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _CONTENT_LOCK:
        memo = _CONTENT.get(path)
    if memo is not None and memo[0] == key:
        return memo[1]
    digest = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return "unreadable"
    found = digest.hexdigest()
    with _CONTENT_LOCK:
        if len(_CONTENT) > 500_000:
            _CONTENT.clear()
        _CONTENT[path] = (key, found)
    return found


def fingerprint(source: Path, output: str | None = None) -> str:
    """A source dir's revision: a digest of every entry's path, type, executable bit and
    content (symlinks: their target; never followed). Version control, dependencies, build
    caches (SKIP_DIRS) and a build command's output are left out, so a build that rewrites
    what it read with the same bytes is no change."""
    import hashlib
    import stat as stat_

    skip_top = None
    if output and not output.startswith("/") and output not in (".", "./"):
        skip_top = Path(output).parts[0]
    digest = hashlib.sha256()
    count = 0
    stack = [("", str(source))]
    while stack:
        rel, path = stack.pop()
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name in SKIP_DIRS or (not rel and entry.name == skip_top):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            name = f"{rel}/{entry.name}" if rel else entry.name
            if stat_.S_ISDIR(st.st_mode):
                what = "d"
                stack.append((name, entry.path))
            elif stat_.S_ISLNK(st.st_mode):
                what = "l:" + os.readlink(entry.path)
            elif stat_.S_ISREG(st.st_mode):
                what = f"f{st.st_mode & 0o111:o}:" + _content_digest(entry.path, st)
            else:
                what = "o"
            digest.update(f"{name}\0{what}\n".encode())
            count += 1
            if count > MAX_FINGERPRINT_FILES:
                raise PermanentError(
                    f"source {source} holds more than {MAX_FINGERPRINT_FILES} entries; too "
                    "many to follow"
                )
    return "dir:" + digest.hexdigest()[:24]
