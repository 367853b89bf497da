"""Push webhooks: a forge (GitHub, Gitea, Forgejo, GitLab) says a branch moved; if the
request is signed with the project's secret and names the ref the project follows, the
daemon is nudged to check that ref now (the payload's commit is not trusted: the daemon asks
the repository itself).

Secrets live in ``data/hooks/secrets/<id>`` (0600), one per project, and ``_desired`` for the
configuration repository; ``reconciler hook-secret ID [--rotate]`` makes or replaces one. A
nudge is a file ``data/hooks/nudge/<id>`` the daemon watches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.stores.gitcache import candidates

DESIRED = "_desired"  # the configuration repository's name here (never a project id)
MAX_PAYLOAD = 4 * 1024 * 1024


@dataclass(frozen=True)
class Verdict:
    status: int  # 200 ping, 202 accepted or ignored, 401 bad signature, 409 not set up
    message: str
    nudge: bool = False


def secret_path(secret_dir: Path, name: str) -> Path:
    return secret_dir / name


def read_secret(secret_dir: Path, name: str) -> bytes | None:
    try:
        with open(secret_path(secret_dir, name), "rb") as fh:
            value = fh.read(4096).strip()
    except OSError:
        return None
    return value or None


def make_secret(secret_dir: Path, name: str, *, rotate: bool = False) -> str:
    """The secret for ``name``; a new one when there is none or ``rotate``."""
    if not rotate:
        current = read_secret(secret_dir, name)
        if current is not None:
            return current.decode()
    secret_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(secret_dir, 0o700)
    value = secrets.token_hex(24)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=secret_dir)  # 0600
    try:
        os.write(fd, value.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, secret_path(secret_dir, name))
    return value


def signed(secret: bytes, body: bytes, headers: dict[str, str]) -> bool | None:
    """Whether the request carries a valid signature; None when it carries none. GitHub,
    Gitea and Forgejo sign the body with HMAC-SHA256 (``X-Hub-Signature-256: sha256=...``,
    ``X-Gitea-Signature``/``X-Forgejo-Signature``: bare hex); GitLab sends the secret itself
    (``X-Gitlab-Token``). Compared in constant time."""
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    hub = headers.get("x-hub-signature-256")
    if hub is not None:
        given = hub.removeprefix("sha256=").strip()
        return hmac.compare_digest(given.encode(), expected.encode())
    for name in ("x-gitea-signature", "x-forgejo-signature", "x-gogs-signature"):
        if name in headers:
            return hmac.compare_digest(headers[name].strip().encode(), expected.encode())
    token = headers.get("x-gitlab-token")
    if token is not None:
        return hmac.compare_digest(token.strip().encode(), secret)
    return None


def event_kind(headers: dict[str, str]) -> str:
    for name in ("x-github-event", "x-gitea-event", "x-forgejo-event", "x-gogs-event"):
        if name in headers:
            return headers[name].strip().lower()
    gitlab = headers.get("x-gitlab-event")
    if gitlab is not None:
        return {"push hook": "push", "tag push hook": "push", "system hook": "push"}.get(
            gitlab.strip().lower(), gitlab.strip().lower()
        )
    return "push"


def judge(secret: bytes | None, body: bytes, headers: dict[str, str], ref: str | None) -> Verdict:
    """What a webhook request amounts to. ``ref``: the ref followed (None: nothing follows
    one here). ``headers`` with lowercase names."""
    if secret is None:
        return Verdict(409, "no webhook secret is set up here; run `reconciler hook-secret ID`")
    ok = signed(secret, body, headers)
    if ok is None:
        return Verdict(401, "the request is not signed (X-Hub-Signature-256 or X-Gitlab-Token)")
    if not ok:
        return Verdict(401, "the signature does not match the webhook secret")
    kind = event_kind(headers)
    if kind == "ping":
        return Verdict(200, "pong")
    if kind != "push":
        return Verdict(202, f"ignored: a {kind!r} event, not a push")
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Verdict(400, "the body is not valid JSON")
    pushed = payload.get("ref") if isinstance(payload, dict) else None
    if not isinstance(pushed, str):
        return Verdict(400, "the push payload has no ref")
    if ref is None:
        return Verdict(409, "this does not follow a git ref; set production.follow: true")
    wanted = {name.removesuffix("^{}") for name in candidates(ref)}
    if pushed not in wanted:
        return Verdict(202, f"ignored: a push to {pushed}, not {ref}")
    return Verdict(202, f"a push to {pushed}: checking it now", nudge=True)


def nudge(nudge_dir: Path, name: str) -> None:
    """Ask the daemon to check ``name``'s source now (it watches the dir)."""
    nudge_dir.mkdir(parents=True, exist_ok=True)
    os.close(os.open(nudge_dir / name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
