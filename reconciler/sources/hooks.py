"""Push webhooks: a forge (GitHub, Gitea, Forgejo, GitLab) says a branch moved; if the
request is signed with the project's secret and names the ref the project follows, the
daemon is nudged to check that ref now (the payload's commit is not trusted: the daemon asks
the repository itself).

Secrets live in ``data/hooks/secrets/<id>`` (0600), one per project, and ``_desired`` for the
configuration repository; ``reconciler hook-secret ID [--rotate]`` makes or replaces one. A
nudge is a file ``data/hooks/nudge/<id>`` the daemon watches.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.config import SECRETS_NUDGE
from reconciler.stores.gitcache import candidates

DESIRED = "_desired"  # the configuration repository's name here (never a project id)
SECRETS = SECRETS_NUDGE  # a nudge: a secret changed (never a project id)
MAX_PAYLOAD = 4 * 1024 * 1024


@dataclass(frozen=True)
class Request:
    """A pull or merge request a forge told of: its number, its branch, open or not."""

    number: int
    branch: str
    open: bool


@dataclass(frozen=True)
class Verdict:
    status: int  # 200 ping, 202 accepted or ignored, 401 bad signature, 409 not set up
    message: str
    nudge: bool = False
    request: Request | None = None  # a request to preview (or no longer)


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
        return {"push hook": "push", "tag push hook": "push", "system hook": "push",
                "merge request hook": "pull_request"}.get(
            gitlab.strip().lower(), gitlab.strip().lower()
        )  # fmt: skip
    return "push"


OPENED = {"opened", "reopened", "synchronize", "synchronized", "edited", "open", "reopen",
          "update"}  # fmt: skip
CLOSED = {"closed", "close", "merge", "merged"}


def request_of(payload: Any) -> Request | None:
    """The request a GitHub, Gitea/Forgejo (``pull_request``) or GitLab (``merge_request``)
    event names, opened or closed; None when it names none (or another action)."""
    if not isinstance(payload, dict):
        return None
    if isinstance(gitlab := payload.get("object_attributes"), dict):
        number, branch = gitlab.get("iid"), gitlab.get("source_branch")
        action = gitlab.get("action") or gitlab.get("state")
    elif isinstance(pull := payload.get("pull_request"), dict):
        number, action = payload.get("number", pull.get("number")), payload.get("action")
        head = pull.get("head")
        branch = head.get("ref") if isinstance(head, dict) else None
    else:
        return None
    if not isinstance(number, int) or not isinstance(branch, str) or not branch:
        return None
    if action in OPENED or action in CLOSED:
        return Request(number, branch, action in OPENED)
    return None


def judge(
    secret: bytes | None,
    body: bytes,
    headers: dict[str, str],
    ref: str | None,
    *,
    previews: bool = False,
) -> Verdict:
    """What a webhook request amounts to. ``ref``: the ref followed (None: nothing follows
    one here); ``previews``: the project previews branches or requests (a push to any
    branch, and a request opened or closed, are news). ``headers`` with lowercase names."""
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
    if kind not in ("push", "pull_request") or (kind == "pull_request" and not previews):
        return Verdict(202, f"ignored: a {kind!r} event, not a push")
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Verdict(400, "the body is not valid JSON")
    if kind == "pull_request":
        request = request_of(payload)
        if request is None:
            return Verdict(202, "ignored: no request opened, updated or closed")
        what = "open" if request.open else "closed"
        return Verdict(202, f"request {request.number} ({request.branch}) {what}: previews "
                       "checked now", nudge=True, request=request)  # fmt: skip
    pushed = payload.get("ref") if isinstance(payload, dict) else None
    if not isinstance(pushed, str):
        return Verdict(400, "the push payload has no ref")
    if previews and pushed.startswith("refs/heads/"):
        return Verdict(202, f"a push to {pushed}: previews checked now", nudge=True)
    if ref is None:
        return Verdict(409, "this does not follow a git ref; set production.follow: true")
    wanted = {name.removesuffix("^{}") for name in candidates(ref)}
    if pushed not in wanted:
        return Verdict(202, f"ignored: a push to {pushed}, not {ref}")
    return Verdict(202, f"a push to {pushed}: checking it now", nudge=True)


def note_request(requests_dir: Path, project: str, request: Request) -> None:
    """Remember an open request's branch (``<dir>/<project>/<number>``), forget a closed one:
    the daemon previews the branches of the open ones."""
    where = requests_dir / project
    if not request.open:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where / str(request.number))
        return
    where.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".request.", dir=where)
    try:
        os.write(fd, request.branch.encode()[:255])
    finally:
        os.close(fd)
    os.replace(tmp, where / str(request.number))


def open_requests(requests_dir: Path, project: str) -> dict[int, str]:
    """The open requests of ``project`` webhooks told of: number -> branch."""
    found: dict[int, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(requests_dir / project):
            if entry.name.isdigit() and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError), open(entry.path, "rb") as fh:
                    found[int(entry.name)] = fh.read(255).decode(errors="replace")
    return found


def nudge(nudge_dir: Path, name: str) -> None:
    """Ask the daemon to check ``name``'s source now (it watches the dir)."""
    nudge_dir.mkdir(parents=True, exist_ok=True)
    os.close(os.open(nudge_dir / name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
