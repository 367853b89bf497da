"""What an operator can do to a project, over the desired files and the state database.

One implementation for both the HTTP API and the local CLI: status, deploy, stop, history,
rollback, the event stream and logs. Changes go through ``DesiredStore.edit`` only; nothing
here touches processes, containers or runtimes, so it all works while the daemon is down.
Errors carry a kind (not found, invalid, conflict, unavailable, denied) that the API maps to
an HTTP status and the CLI to an exit code.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.config import Config, DataLayout
from reconciler.core.kinds import (
    EdgeMode,
    RuntimeName,
    Status,
)
from reconciler.core.plan import deployment_of, describe
from reconciler.core.spec import (
    InvalidProjectId,
    ProjectId,
    check_project_id,
)
from reconciler.readside.logs import LogReads
from reconciler.readside.manage import Manage
from reconciler.readside.readcache import Listing, ReadCache
from reconciler.readside.streams import Streams
from reconciler.readside.terms import (  # noqa: F401 - importable from here too
    LOG_NAMES,
    MAX_LOG_CHUNK,
    STREAM_END,
    WAITING,
    ErrorKind,
    Event,
    OperationError,
    _not_found,
    _site_lines,
)
from reconciler.readside.views import (
    AppFound,
    History,
    Plan,
    ProductionStatus,
    ProjectList,
    ProjectSummary,
    Reader,
    Version,
)
from reconciler.readside.writes import Writes
from reconciler.stores.desired import DesiredStore
from reconciler.stores.facts import running_commit
from reconciler.stores.opened import Stores
from reconciler.stores.previews import read_preview
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB, VersionRow
from reconciler.stores.vault import Vault

FULL_BELOW = 1 << 20  # free bytes under which the disk of the state database is full


@dataclass
class Operations(Writes, Manage, LogReads, Streams):
    db: StateDB
    desired: DesiredStore
    releases: ReleaseStore
    layout: DataLayout  # where the edge's access log is
    poll_interval: float = 0.2
    heartbeat: float = 3.0  # a closed stream's slot is freed at the next one; < idle timeout
    rollback_grace: float = 30.0
    down_limit: float = 10.0  # a follow ends this long after it finds the daemon not running
    follow_grace: float = 120.0  # beyond the build and health timeouts, before a follow ends
    edge: EdgeMode = EdgeMode.OFF
    default_runtime: RuntimeName = RuntimeName.PROCESS
    preview_domain: str = "localhost"
    vault: Vault | None = None
    actor: str = "api"  # who asks, as a deployment's trigger names it ("cli" for the CLI)
    reader: Reader = field(init=False)
    cache: ReadCache[tuple[ProductionStatus, ProjectSummary | None]] = field(init=False)
    _listing: tuple[object, bytes] | None = field(init=False, default=None)

    @classmethod
    def of(cls, stores: Stores, config: Config) -> Operations:
        return cls(
            db=stores.db,
            desired=stores.desired,
            releases=stores.releases,
            edge=config.edge,
            default_runtime=config.default_runtime,
            layout=config.layout,
            preview_domain=config.preview_domain,
            vault=stores.vault,
        )

    def __post_init__(self) -> None:
        self.reader = Reader(
            self.db, self.desired, self.releases, self.edge, self.default_runtime, self.vault
        )
        self.cache = ReadCache(
            self.db,
            self.desired.directory,
            self._read,
            shared=lambda: (self.reader.edge_mode(), self.reader.runtime()),
        )

    # -- lookups ---------------------------------------------------------------------------

    def check_id(self, raw: str) -> ProjectId:
        """A project id that passes the allowlist (with a file or not)."""
        try:
            return check_project_id(raw)
        except InvalidProjectId as exc:
            raise OperationError(ErrorKind.INVALID, str(exc)) from None

    def project(self, raw: str) -> ProjectId:
        """A project id that passes the allowlist and has a desired file."""
        project_id = self.check_id(raw)
        if self.desired.path_for(project_id) is None:
            raise _not_found(project_id)
        return project_id

    def relative(self, message: str) -> str:
        """Name desired files relative to the desired dir: never leak absolute paths."""
        return message.replace(f"{self.desired.directory}/", "")

    # -- reads -----------------------------------------------------------------------------

    def _read(
        self, project_id: ProjectId
    ) -> tuple[tuple[ProductionStatus, ProjectSummary | None], float | None]:
        """A project's status and list entry, read from the stores (see ``readcache``)."""
        snap = self.reader.snapshot(project_id)
        desired, status = snap.file, snap.status()
        if status.error:
            status = status.model_copy(update={"error": self.relative(status.error)})
        summary = None
        if desired is not None:
            summary = ProjectSummary(
                id=project_id,
                file=desired.path.name,
                valid=desired.valid,
                production=status,
                error=desired.error and self.relative(desired.error),
            )
        return (status, summary), desired.settles_at if desired else None

    def status(self, project_id: ProjectId) -> ProductionStatus:
        return self.cache.get(project_id)[0]

    def status_of(self, raw: str) -> ProductionStatus:
        """``status(project(raw))`` with the file looked up once: the API's hottest read."""
        try:
            project_id = check_project_id(raw)
        except InvalidProjectId as exc:
            raise OperationError(ErrorKind.INVALID, str(exc)) from None
        found = self.cache.get_present(project_id)
        if found is None:
            raise _not_found(project_id)
        return found[0]

    def projects(self) -> ProjectList:
        return self._project_list(self.cache.all())

    def _project_list(
        self, listing: Listing[tuple[ProductionStatus, ProjectSummary | None]]
    ) -> ProjectList:
        items = [summary for _pid, (_status, summary) in listing.projects if summary is not None]
        items.extend(
            ProjectSummary(id=None, file=name, valid=False, production=None,
                           error=f"{name}:1:1: {message}")
            for name, message in listing.orphans
        )  # fmt: skip
        return ProjectList(projects=items)

    def projects_json(self) -> bytes:
        """``projects()`` as JSON, built again only when something in it changed."""
        listing = self.cache.all()
        cached = self._listing
        if cached is not None and cached[0] is listing:
            return cached[1]
        body = self._project_list(listing).model_dump_json().encode()
        self._listing = (listing, body)
        return body

    def plan(self, project_id: ProjectId) -> Plan:
        """The steps the next reconcile would take (a dry run: nothing is done)."""
        steps = list(self.reader.snapshot(project_id).steps)
        kind = deployment_of(steps)
        return Plan(
            project=project_id,
            pending=bool(steps),
            deployment=str(kind) if kind is not None else None,
            steps=[describe(step) for step in steps],
        )

    def history(self, project_id: ProjectId) -> History:
        row = self.db.project(project_id)
        active = row.productionHash if row and row.productionStatus != Status.STOPPED else ""
        config = self.status(project_id).config if active else None
        previews = self._previews(project_id)
        outcomes = self.db.versions(project_id)
        return History(
            versions=[
                Version(
                    hash=v.hash,
                    isActive=v.is_active,
                    createdAt=v.created_at,
                    config=config if v.is_active else None,
                    **running_commit(row, v.hash, self.releases.source_of(project_id, v.hash)),
                    app=AppFound.of(self.releases.app_of(project_id, v.hash)),
                    previewUrl=previews.get(v.hash),
                    **_outcome(outcomes.get(v.hash)),
                )
                for v in self.releases.history(project_id, active=active or "")
            ]
        )

    def _previews(self, project_id: ProjectId) -> dict[str, str]:
        """The versions the edge shows at their own address (its preview links), by hash."""
        if self.edge == EdgeMode.OFF:
            return {}
        address = read_preview(self.layout.edge, self.preview_domain)
        try:
            shown = os.listdir(self.layout.edge / "routes" / "previews" / project_id)
        except OSError:
            return {}
        return {v: address.url(project_id, v) for v in shown} if address else {}

    # -- events and logs -------------------------------------------------------------------

    def daemon(self) -> tuple[bool, str]:
        """Whether the daemon runs (by the pulse it writes), and how an operator is told."""
        row = self.db.daemon()
        if row is None:
            return False, "not running (it has never run with this data dir)"
        if row.stoppedAt is not None:
            return False, f"not running (it stopped at {row.stoppedAt})"
        silence = row.silence(time.time())
        if not row.alive(time.time()):
            full = _full_disk(self.db.path.parent)
            if full is not None and row.pid is not None and os.path.exists(f"/proc/{row.pid}"):
                return False, (
                    f"not answering: pid {row.pid} runs, but it cannot write its state for "
                    f"{int(silence)} s: {full}"
                )
            return False, f"not running (no sign of it for {int(silence)} s)"
        return True, f"running (pid {row.pid}, since {row.startedAt})"


def _full_disk(directory: Path) -> str | None:
    """What to say when the disk that holds ``directory`` is (nearly) full, else None."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free >= FULL_BELOW:
        return None
    return f"the disk that holds {directory} is full ({free // 1024} KiB free)"


def _outcome(row: VersionRow | None) -> dict[str, Any]:
    """A version's ``served`` / ``servedAt`` / ``failure``, from what became of it."""
    if row is None:
        return {}
    if row.servedAt is not None:
        return {"served": True, "servedAt": row.servedAt}
    return {"failure": row.error}
