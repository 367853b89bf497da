"""The desired files from a git repository (``--desired-git URL``): the configuration
repository is the single source of truth, and its log the deploy audit trail.

Layout under ``data/desired-git/``: ``cache.git`` (bare, fetched into), ``trees/<sha>`` (a
clean checkout of each applied commit), ``current`` (a symlink to the applied tree: the
desired dir the daemon and the API read) and ``settings.json`` (the repository and ref, for
the CLI and an API started without the flags). A new commit is applied as a whole: its tree
is written beside the old one and ``current`` is swapped in one rename, so no reader ever
sees half of a commit; then the projects whose files changed are reconciled.

Writes (the API's and the CLI's deploy, stop, rollback) become commits on the ref's tip,
pushed to the remote: the same comment-preserving edit as on a plain dir, on the file as the
tip holds it. A push refused as not fast-forward (someone pushed meanwhile) is tried again on
the new tip; refused again, or for any other reason, the write fails with git's reason and
nothing changes here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from reconciler.core.config import DataLayout, parse_author
from reconciler.core.redact import redact
from reconciler.stores.gitcache import TIP, GitError, checkout_tree, ls_remote, run_git

logger = logging.getLogger(__name__)

DEFAULT_AUTHOR = "reconciler <reconciler@localhost>"
SETTINGS = "settings.json"
PUSH_TRIES = 4
KEEP_TREES = 3
_REJECTED = ("[rejected]", "non-fast-forward", "fetch first", "stale info", "failed to lock")
REMOVE = b"\0remove"  # what a transform returns to delete the file


class PushRefused(Exception):
    """The remote did not take a write; nothing changed. ``str()`` is git's reason."""


class NoSuchFile(LookupError):
    pass


class ConfigRepo:
    def __init__(
        self, root: Path, url: str, ref: str = "main", *, author: str = DEFAULT_AUTHOR
    ) -> None:
        self.root = root
        self.url = url
        self.ref = ref
        self.author = parse_author(author)
        self.cache = root / "cache.git"
        self.trees = root / "trees"
        self.current = root / "current"
        self._lock = threading.Lock()

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> ConfigRepo | None:
        """The configuration repository a daemon on ``data_dir`` applies (None: plain dir)."""
        root = DataLayout(data_dir).desired_git
        try:
            settings = json.loads((root / SETTINGS).read_text())
            return cls(root, settings["url"], settings["ref"], author=settings["author"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_settings(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps(
            {"url": self.url, "ref": self.ref, "author": f"{self.author[0]} <{self.author[1]}>"}
        )
        tmp = self.root / f".{SETTINGS}.{secrets.token_hex(4)}"
        tmp.write_text(text + "\n")
        os.chmod(tmp, 0o600)  # the URL may hold a credential
        os.replace(tmp, self.root / SETTINGS)

    # -- reading ---------------------------------------------------------------------------

    def head(self) -> str | None:
        """The commit applied now (what ``current`` points at)."""
        try:
            return os.path.basename(os.readlink(self.current))
        except OSError:
            return None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer of the checkout and the cache at a time, across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _git(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        out: str = run_git(
            [f"--git-dir={self.cache}", *args], env=env, secret_url=self.url, check=check
        ).stdout
        return out.strip()

    def _ensure_cache(self) -> None:
        if (self.cache / "HEAD").is_file():
            return
        shutil.rmtree(self.cache, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".cache-", dir=self.root))
        run_git(["init", "--quiet", "--bare", str(tmp)], timeout=30)
        os.replace(tmp, self.cache)

    def _fetch(self) -> str:
        """The commit the remote's ref names now, fetched into the cache."""
        self._ensure_cache()
        found = ls_remote(self.url, self.ref)
        if found is None:
            raise GitError(f"{redact(self.url)} has no branch {self.ref!r}")
        self._git("fetch", "--quiet", "--no-tags", "--force", "--", self.url, f"+{found[1]}:{TIP}")
        return self._git("rev-parse", "--verify", f"{TIP}^{{commit}}")

    def sync(self) -> str | None:
        """Fetch the ref; apply its commit when it is not the applied one (returned then)."""
        with self.locked():
            return self._apply(self._fetch())

    def _apply(self, sha: str) -> str | None:
        """Make ``sha`` the applied commit; it when it was not already."""
        old = self.head()
        if old == sha:
            return None
        self.trees.mkdir(parents=True, exist_ok=True)
        tree = self.trees / sha
        if not tree.is_dir():
            tmp = self.trees / f".tmp-{sha}-{secrets.token_hex(4)}"
            try:
                checkout_tree(self.cache, sha, tmp)
                os.rename(tmp, tree)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        link = self.root / f".current-{secrets.token_hex(4)}"
        os.symlink(os.path.join("trees", sha), link)
        os.replace(link, self.current)  # the swap: readers see the old commit or the new
        self._prune(keep={sha, old})
        logger.info("desired state: applied %s", sha[:12])
        return sha

    def changed_files(self, old: str, new: str) -> tuple[str, ...] | None:
        """The file names that differ between two applied commits (None: not known)."""
        try:
            names = self._git("diff", "--name-only", "--no-renames", old, new, "--")
        except GitError:
            return None
        return tuple(n for n in names.splitlines() if n)

    def _prune(self, keep: set[str | None]) -> None:
        """Old trees go (a reader that resolved ``current`` a moment ago keeps a few)."""
        try:
            entries = sorted(
                (e for e in os.scandir(self.trees) if not e.name.startswith(".")),
                key=lambda e: e.stat(follow_symlinks=False).st_mtime,
                reverse=True,
            )
        except OSError:
            return
        for index, entry in enumerate(entries):
            if entry.name not in keep and index >= KEEP_TREES:
                shutil.rmtree(entry.path, ignore_errors=True)

    # -- writing ---------------------------------------------------------------------------

    def commit_edit(
        self,
        names: tuple[str, ...],
        transform: Callable[[str, bytes], tuple[bytes | None, str]],
        *,
        create: bool = False,
    ) -> bool:
        """Edit the first of ``names`` the tip holds: ``transform(name, data)`` gives the new
        bytes (None: no change; ``REMOVE``: delete the file) and the commit message. Commit,
        push, apply. True when a commit was pushed. ``create``: a file the tip lacks is
        ``names[0]``, written from empty bytes. Raises NoSuchFile, PushRefused, GitError, or
        what transform does."""
        name_, email = self.author
        identity = {
            "GIT_AUTHOR_NAME": name_, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name_, "GIT_COMMITTER_EMAIL": email,
        }  # fmt: skip
        with self.locked():
            reason = ""
            for _attempt in range(PUSH_TRIES):
                tip = self._fetch()
                listed = self._git("ls-tree", tip, "--", *names)
                entries = [line.split(None, 3) for line in listed.splitlines() if line]
                if not entries and not create:
                    self._apply(tip)
                    raise NoSuchFile(names[0])
                new, message, mode, name = self._transformed(entries, names[0], transform)
                if new is None:
                    self._apply(tip)
                    return False
                commit = self._commit(tip, name, mode, new, message, identity)
                push = run_git(
                    [f"--git-dir={self.cache}", "push", "--porcelain", "--", self.url,
                     f"{commit}:refs/heads/{self.ref}"],
                    secret_url=self.url, check=False,
                )  # fmt: skip
                if push.returncode == 0:
                    self._git("update-ref", TIP, commit)
                    self._apply(commit)
                    logger.info("desired state: pushed %s: %s", commit[:12], message)
                    return True
                reason = _push_reason(push.stdout, push.stderr)
                if not any(mark in f"{push.stdout}\n{push.stderr}" for mark in _REJECTED):
                    raise PushRefused(f"the remote refused the push: {reason}")
                logger.info("desired state: push of %s refused (%s); again on the new tip",
                            commit[:12], reason)  # fmt: skip
            raise PushRefused(
                f"the remote refused the push {PUSH_TRIES} times (it keeps moving): {reason}"
            )

    def _transformed(
        self,
        entries: list[list[str]],
        default: str,
        transform: Callable[[str, bytes], tuple[bytes | None, str]],
    ) -> tuple[bytes | None, str, str, str]:
        """(new bytes, message, mode, name) of the file ``entries`` lists (or a new one)."""
        if not entries:
            new, message = transform(default, b"")
            return new, message, "100644", default
        mode, kind, blob, name = entries[0]
        if kind != "blob" or mode == "120000":
            raise PushRefused(f"{name} is not a regular file in the repository")
        data = run_git([f"--git-dir={self.cache}", "cat-file", "blob", blob], text=False).stdout
        new, message = transform(name, data)
        return new, message, mode, name

    def _commit(
        self, tip: str, name: str, mode: str, new: bytes, message: str, identity: dict[str, str]
    ) -> str:
        work = Path(tempfile.mkdtemp(prefix=".edit-", dir=self.root))
        try:
            index = {"GIT_INDEX_FILE": str(work / "index")}
            self._git("read-tree", tip, env=index)
            if new is REMOVE:
                self._git("update-index", "--force-remove", "--", name, env=index)
            else:
                content = work / "blob"
                content.write_bytes(new)
                blob = self._git("hash-object", "-w", "--", str(content))
                self._git("update-index", "--add", "--cacheinfo", f"{mode},{blob},{name}",
                          env=index)  # fmt: skip
            tree = self._git("write-tree", env=index)
            return self._git(
                "commit-tree", tree, "-p", tip, "-m", message, env={**index, **identity}
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _push_reason(stdout: str, stderr: str) -> str:
    lines = [
        line.strip()
        for line in f"{stdout}\n{stderr}".splitlines()
        if line.strip() and not line.startswith(("To ", "Done"))
    ]
    return "; ".join(lines[-4:]) or "no reason given"


def forget_settings(root: Path) -> None:
    """A daemon on a plain desired dir: the API and the CLI must not write commits."""
    with contextlib.suppress(FileNotFoundError):
        (root / SETTINGS).unlink()
