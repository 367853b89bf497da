"""Projects made, configured and deleted as a whole (the dashboard's forms), and the secrets
their env refers to.

A project's settings are its desired file: they are shown as its text and saved as a whole
(comments kept), after a dry run that shows the diff and any problem; its env is edited as
one block of that text. Every save is the file written (or a commit in desired-git mode), so
the daemon converges as it does to any edit. A secret's value goes in and never comes out.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.core.config import SECRETS_NUDGE
from reconciler.core.detect import DetectError, detect
from reconciler.core.spec import InvalidProjectId, ProjectId, check_project_id
from reconciler.readside.terms import ErrorKind, OperationError, _not_found
from reconciler.stores.desired import (
    DesiredFileError,
    DesiredStore,
    EditError,
    ProjectNotFound,
    Rewrite,
    parse,
    text_digest,
)
from reconciler.stores.desired.edit import replace_block
from reconciler.stores.desired.parse import decode
from reconciler.stores.state import StateDB
from reconciler.stores.vault import SecretError, Vault

if TYPE_CHECKING:
    from reconciler.core.config import DataLayout
    from reconciler.readside.readcache import ReadCache

MAX_TEXT = 64 * 1024


def diff(before: str, after: str, name: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True),
        fromfile=f"a/{name}", tofile=f"b/{name}",
    )  # fmt: skip
    return "".join(lines)


class Manage:
    if TYPE_CHECKING:  # what the operations it is part of provide
        db: StateDB
        desired: DesiredStore
        layout: DataLayout
        vault: Vault | None
        cache: ReadCache[Any]
        actor: str

        def relative(self, message: str) -> str: ...

    # -- a project's file as text ----------------------------------------------------------

    def desired_text(self, project_id: ProjectId) -> dict[str, Any]:
        path = self.desired.path_for(project_id)
        if path is None:
            raise _not_found(project_id)
        read = self.desired.read(project_id)
        try:
            data = path.read_bytes()
            text = decode(path, data, settled=True)
        except (OSError, DesiredFileError) as exc:
            raise OperationError(ErrorKind.CONFLICT, f"{path.name} cannot be read: {exc}") from None
        return {
            "file": path.name,
            "text": text,
            "digest": text_digest(data),  # of the bytes: send it back as ``base`` to save
            "valid": bool(read and read.valid),
            "error": self.relative(read.error) if read and read.error else None,
            "derived": self.desired.is_derived(project_id),
        }

    def save_text(
        self,
        project_id: ProjectId,
        text: str,
        *,
        create: bool,
        dry_run: bool,
        base: str | None = None,
        rewrite: Rewrite | None = None,
    ) -> dict[str, Any]:
        """Check ``text`` as the project's file; unless ``dry_run``, write it. Answers the
        diff against what the file says now (empty: the same), and ``saved``. ``base``: the
        digest of the text it was made from (a file changed since is refused);
        ``rewrite``: how ``text`` was made from the file, redone on a file saved meanwhile."""
        if not isinstance(text, str) or len(text.encode()) > MAX_TEXT:
            raise OperationError(ErrorKind.INVALID, f"text: at most {MAX_TEXT} bytes of YAML")
        name = f"{project_id}.yaml"
        before = ""
        if not create:
            current = self.desired_text(project_id)
            before, name = current["text"], current["file"]
        elif self.desired.path_for(project_id) is not None:
            raise OperationError(ErrorKind.CONFLICT, f"project {project_id} exists")
        text = text if text.endswith("\n") else text + "\n"
        try:
            parse(Path(name), text.encode())
        except DesiredFileError as exc:
            problems = [f"{p.line}:{p.column}: {p.message}" for p in exc.problems]
            raise OperationError(ErrorKind.INVALID, "; ".join(problems)) from None
        changes = diff(before, text, name)
        saved = False
        if not dry_run and changes:
            saved = self._write(project_id, rewrite or text, create=create, base=base)
        return {"file": name, "diff": changes, "saved": saved}

    def _write(
        self, project_id: ProjectId, text: str | Rewrite, *, create: bool, base: str | None
    ) -> bool:
        reason = "create" if create else "settings"
        try:
            saved = self.desired.write_text(
                project_id, text, create=create, reason=reason, base=base
            )
        except ProjectNotFound:
            raise _not_found(project_id) from None
        except FileExistsError as exc:
            raise OperationError(ErrorKind.CONFLICT, str(exc)) from None
        except DesiredFileError as exc:
            raise OperationError(ErrorKind.INVALID, exc.problems[0].message) from None
        except EditError as exc:
            raise OperationError(ErrorKind.CONFLICT, self.relative(str(exc))) from None
        finally:
            self.cache.forget(project_id)
        if saved:
            self.db.note_trigger(project_id, f"{self.actor}: {reason}")
        return saved

    def save_env(
        self, project_id: ProjectId, env: dict[str, Any], *, dry_run: bool
    ) -> dict[str, Any]:
        """The file with its ``env`` block replaced (values, or ``{secret: NAME}``)."""
        if not isinstance(env, dict):
            raise OperationError(ErrorKind.INVALID, "env: an object of NAME: value")
        current = self.desired_text(project_id)
        path = Path(current["file"])

        def rewrite(text: str) -> str:  # redone on the file as it is at the write
            return replace_block(text, "env", env, path=path)

        try:
            text = rewrite(current["text"])
        except DesiredFileError as exc:
            raise OperationError(ErrorKind.CONFLICT, exc.problems[0].message) from None
        return self.save_text(project_id, text, create=False, dry_run=dry_run, rewrite=rewrite)

    def delete_project(self, project_id: ProjectId) -> None:
        """Its file goes: the daemon stops it, and keeps its versions until pruned."""
        try:
            self.desired.remove(project_id)
        except ProjectNotFound:
            raise _not_found(project_id) from None
        except EditError as exc:
            raise OperationError(ErrorKind.CONFLICT, self.relative(str(exc))) from None
        finally:
            self.cache.forget(project_id)

    def draft(self, raw_id: str, source: str, *, ref: str | None = None) -> dict[str, Any]:
        """A new project's desired file for ``source`` (a dir on this host, relative to the
        desired dir or absolute; or a git URL), with what a deploy would build and start."""
        try:
            project_id = check_project_id(raw_id)
        except InvalidProjectId as exc:
            raise OperationError(ErrorKind.INVALID, str(exc)) from None
        if self.desired.path_for(project_id) is not None:
            raise OperationError(ErrorKind.CONFLICT, f"project {project_id} exists")
        if not isinstance(source, str) or not source.strip() or len(source) > 1000:
            raise OperationError(ErrorKind.INVALID, "source: a directory or a git URL")
        if _is_git(source):
            branch = ref or "main"
            text = (f"source:\n  git: {_quoted(source)}\n  ref: {_quoted(branch)}\n"
                    "production:\n  state: stopped\n  follow: true\n")  # fmt: skip
            return {"id": project_id, "text": text, "detected": None}
        where = Path(os.path.normpath(self.desired.directory / source))
        try:
            found = detect(where)
        except DetectError as exc:
            raise OperationError(ErrorKind.INVALID, f"source {source}: {exc}") from None
        return {"id": project_id, "text": found.desired_yaml(source), "detected": found.describe()}

    # -- secrets ---------------------------------------------------------------------------

    def _vault(self) -> Vault:
        if self.vault is None:
            raise OperationError(ErrorKind.UNAVAILABLE, "no vault for secrets here")
        return self.vault

    def secrets(self) -> list[dict[str, Any]]:
        """Each secret's name, revision and when it was set, and who refers to it; never
        its value."""
        users: dict[str, list[str]] = {}
        for project_id, file in self.desired.scan().projects.items():
            for name in file.spec.secret_names if file.spec is not None else ():
                users.setdefault(name, []).append(project_id)
        listed: list[dict[str, Any]] = [
            {"name": s.name, "revision": s.revision, "updatedAt": s.updatedAt,
             "usedBy": users.pop(s.name, [])}
            for s in self._vault().list()
        ]  # fmt: skip
        listed += [
            {"name": name, "revision": None, "updatedAt": None, "usedBy": projects}
            for name, projects in sorted(users.items())
        ]  # referred to, never set: a start of those projects fails until it is
        return listed

    def set_secret(self, name: str, value: str) -> bool:
        try:
            changed = self._vault().set(name, value)
        except SecretError as exc:
            raise OperationError(ErrorKind.INVALID, str(exc)) from None
        if changed:
            self._nudge_secrets()
        return changed

    def delete_secret(self, name: str) -> None:
        try:
            found = self._vault().delete(name)
        except SecretError as exc:
            raise OperationError(ErrorKind.INVALID, str(exc)) from None
        if not found:
            raise OperationError(ErrorKind.NOT_FOUND, f"secret {name!r} is not set")
        self._nudge_secrets()

    def _nudge_secrets(self) -> None:
        """The daemon reconciles every project that refers to a secret."""
        self.layout.nudges.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
        os.close(os.open(self.layout.nudges / SECRETS_NUDGE, flags, 0o600))


def _is_git(source: str) -> bool:
    return "://" in source or source.endswith(".git") or source.startswith("git@")


def _quoted(value: str) -> str:
    import json

    return json.dumps(value)
