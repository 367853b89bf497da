"""Secrets kept out of the desired files: ``env: {DATABASE_URL: {secret: db-url}}`` names a
secret; its value is set through the CLI, the API or the dashboard and kept here, encrypted.

Each secret is a file ``data/vault/<name>.secret`` holding a Fernet token (AES-128-CBC with an
HMAC-SHA256, from the ``cryptography`` library); the key is ``data/vault/key`` (created on
first use, mode 0600) unless ``RECONCILER_VAULT_KEY_FILE`` names one kept elsewhere (a systemd
credential, a mounted secret), so a copy of the data dir alone does not give the values away.
A value is never logged, never returned by the API and never written to an event. What the
rest of the daemon sees of a secret is its revision: a digest of its token, which changes with
every new value, so a changed secret is a settings change (a new instance).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.fileio import atomic_write
from reconciler.core.spec import ProjectSpec
from reconciler.core.timeutil import iso

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
SUFFIX = ".secret"
MAX_VALUE = 4096  # characters
KEY_ENV = "RECONCILER_VAULT_KEY_FILE"


class SecretError(ValueError):
    """A bad name or value, or a secret that cannot be read (its message is safe to show)."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise SecretError(
            "a secret name is 1-63 characters: lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class SecretInfo:
    name: str
    revision: str  # 8 hex characters; changes with every new value
    updatedAt: str


class Vault:
    """The secrets of one data dir. Safe to share between threads."""

    def __init__(self, root: Path, *, key_file: Path | None = None) -> None:
        self.root = root
        env_key = os.environ.get(KEY_ENV)
        self.key_file = key_file or (Path(env_key) if env_key else root / "key")
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()
        self._revisions: dict[str, tuple[float, str]] = {}  # name -> (mtime, revision)

    def _cipher(self, *, create: bool) -> Fernet:
        from cryptography.fernet import Fernet

        with self._lock:
            if self._fernet is None:
                try:
                    key = self.key_file.read_bytes().strip()
                except FileNotFoundError:
                    if not create:
                        raise SecretError("no secret has been set (the vault has no key)") from None
                    key = Fernet.generate_key()
                    self.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        out.write(key + b"\n")
                try:
                    self._fernet = Fernet(key)
                except ValueError:
                    raise SecretError(f"the vault key in {self.key_file} is not valid") from None
            return self._fernet

    def _path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}{SUFFIX}"

    def set(self, name: str, value: str) -> bool:
        """Store a value (True: it changed; the same value again changes nothing)."""
        path = self._path(name)
        if not isinstance(value, str) or "\0" in value or len(value) > MAX_VALUE:
            raise SecretError(f"a secret value is text of at most {MAX_VALUE} characters, no NUL")
        cipher = self._cipher(create=True)
        with contextlib.suppress(SecretError):
            if self.value(name) == value:
                return False
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        atomic_write(path, cipher.encrypt(value.encode()))
        return True

    def value(self, name: str) -> str:
        """The clear value (for an instance's environment only)."""
        from cryptography.fernet import InvalidToken

        try:
            token = self._path(name).read_bytes()
        except FileNotFoundError:
            raise SecretError(f"secret {name!r} is not set") from None
        try:
            return self._cipher(create=False).decrypt(token).decode()
        except InvalidToken:
            raise SecretError(f"secret {name!r} cannot be read with this vault's key") from None

    def delete(self, name: str) -> bool:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def revision(self, name: str) -> str | None:
        """A digest of the stored token (None: not set); memoized on the file's mtime."""
        path = self._path(name)
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return None
        memo = self._revisions.get(name)
        if memo is not None and memo[0] == mtime:
            return memo[1]
        revision = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
        self._revisions[name] = (mtime, revision)
        return revision

    def list(self) -> list[SecretInfo]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
                name = entry.name.removesuffix(SUFFIX)
                if entry.name.endswith(SUFFIX) and NAME.fullmatch(name) and entry.is_file():
                    revision = self.revision(name)
                    if revision is not None:
                        updated = iso(datetime.fromtimestamp(entry.stat().st_mtime, UTC))
                        found.append(SecretInfo(name, revision, updated))
        return found


def revisions(spec: ProjectSpec | None, vault: Vault | None) -> dict[str, str | None]:
    """The revision of each secret ``spec`` refers to (None: not set)."""
    if spec is None or vault is None or not spec.secret_names:
        return {}
    return {name: vault.revision(name) for name in spec.secret_names}


def resolve_env(spec: ProjectSpec, vault: Vault | None) -> ProjectSpec:
    """``spec`` with its secrets' values in ``env``, for a runtime. A secret that is not set
    fails the start with a message that says how to set it."""
    names = spec.secret_names
    if not names:
        return spec
    if vault is None:
        raise SecretError("this daemon has no vault to read secrets from")
    values = {}
    for name in names:
        try:
            values[name] = vault.value(name)
        except SecretError as exc:
            raise SecretError(f"{exc}: set it with `reconciler secret set {name}`") from None
    return spec.with_env(values)
