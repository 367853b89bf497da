"""The files the edge reads per request, kept beside a project's releases: the slot that serves a
dynamic site (``slot``), a preview link, and the addresses of a swarm service's tasks
(``tasks/``). Writing them is how a site moves with no configuration load."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from reconciler.core.errors import ReleaseError
from reconciler.core.fileio import atomic_write
from reconciler.core.redact import scrub
from reconciler.core.spec import ProjectId
from reconciler.stores.releases.release import (
    PREVIEW,
    RECORD,
    SLOT,
    SLOT_NAMES,
    SLOTS,
    TASKS,
    StoreParts,
)

RECORDED = ("observedGeneration", "failedDigest", "productionError")


class SiteLinks(StoreParts):
    def _link_base(self, project_id: ProjectId) -> Path | None:
        """The dist a new release shares unchanged files with: the one ``current`` points
        at, else the newest kept release."""
        version = self.current(project_id)
        if version is None:
            kept = self.versions(project_id)
            version = kept[0].hash if kept else None
        return self.project_dir(project_id) / version / "dist" if version else None

    def preview(self, project_id: ProjectId, version: str) -> None:
        """Point ``preview`` at a complete release (the edge serves it on its check route)."""
        if self.get(project_id, version) is None:
            raise ReleaseError(f"version {version} of {project_id} is not a complete release")
        self._point(project_id, PREVIEW, version)

    def unpreview(self, project_id: ProjectId) -> None:
        """Drop the ``preview`` link once its check is over: the check route then answers
        404, so a stopped site's kept releases are reachable through no listener."""
        with contextlib.suppress(FileNotFoundError):
            (self.project_dir(project_id) / PREVIEW).unlink()

    def keep_record(self, project_id: ProjectId, changes: dict[str, object]) -> None:
        """Keep beside the releases what the state database says that the releases cannot:
        the generation last built (a build whose content was kept already reuses a release
        made for an older one) and a failure with the desired digest it failed for. A
        record rebuilt after the database is lost then neither builds again nor retries
        a start that failed."""
        before = self.kept_record(project_id)
        record = dict(before)
        if "observedGeneration" in changes:
            record["observedGeneration"] = changes["observedGeneration"]
        if "failedDigest" in changes:  # a failure's error goes with it (others are passing)
            record.pop("productionError", None)
            record["failedDigest"] = changes["failedDigest"]
            if changes["failedDigest"] is not None:
                error = changes.get("productionError")
                record["productionError"] = scrub(error) if isinstance(error, str) else None
        record = {k: v for k, v in record.items() if v is not None}
        if record == before or not self.project_dir(project_id).is_dir():
            return
        data = json.dumps(record, sort_keys=True).encode() + b"\n"
        with contextlib.suppress(OSError):  # the database is the record; this is its spare
            atomic_write(self.project_dir(project_id) / RECORD, data, durable=False)

    def kept_record(self, project_id: ProjectId) -> dict[str, object]:
        try:
            found = json.loads((self.project_dir(project_id) / RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in found.items() if k in RECORDED} if isinstance(found, dict) else {}

    def slot(self, project_id: ProjectId) -> str | None:
        """The slot the edge routes to (``a`` or ``b``), None when there is none yet."""
        try:
            target = os.readlink(self.project_dir(project_id) / SLOT)
        except OSError:
            return None
        name = target.removeprefix(f"{SLOTS}/")
        return name if name in SLOT_NAMES else None

    def set_slot(self, project_id: ProjectId, slot: str) -> None:
        """Route the project's edge traffic to ``slot`` (one atomic link flip)."""
        if slot not in SLOT_NAMES:
            raise ValueError(f"slot must be one of {SLOT_NAMES}")
        slots = self.project_dir(project_id) / SLOTS
        for name in SLOT_NAMES:
            marker = slots / name / name
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
        self._point(project_id, SLOT, f"{SLOTS}/{slot}")

    def route_tasks(self, project_id: ProjectId, upstreams: tuple[str, ...], fanout: int) -> bool:
        """Point the edge's ``fanout`` upstream entries of a service at ``upstreams`` (file i
        names task i mod n; each file replaced atomically, so a request reads an address that
        ran a moment ago or runs now, never a partial one); no task: no files, and the edge
        answers 503. True when something changed."""
        tasks = self.project_dir(project_id) / TASKS
        wanted = {str(i): upstreams[i % len(upstreams)] for i in range(fanout)} if upstreams else {}
        changed = False
        for name, address in wanted.items():
            path = tasks / name
            try:
                if path.read_text() == address:
                    continue
            except OSError:
                tasks.mkdir(parents=True, exist_ok=True)
            atomic_write(path, address.encode(), durable=False)
            changed = True
        # the edge reads them from one name: ``@<addr>,<addr>,...`` (``fanout`` entries)
        routed = "@" + ",".join(wanted.values()) if wanted else None
        if routed is not None and len(routed) > 250:  # a file name's limit: fewer, in turn
            routed = "@" + ",".join(upstreams[i % 4 % len(upstreams)] for i in range(fanout))
        if routed is not None and not (tasks / routed).exists():
            (tasks / routed).touch()
            changed = True
        if tasks.is_dir():
            # the first file goes last: the edge's route takes the tasks while it exists
            for entry in sorted(os.scandir(tasks), key=lambda e: e.name == "0"):
                stale = entry.name.isdigit() and entry.name not in wanted
                if stale or (entry.name.startswith("@") and entry.name != routed):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    changed = True
        return changed

    def routed_tasks(self, project_id: ProjectId) -> tuple[str, ...]:
        """The distinct addresses the edge routes a service to now."""
        tasks = self.project_dir(project_id) / TASKS
        found: list[str] = []
        try:
            entries = sorted(os.scandir(tasks), key=lambda e: e.name)
        except OSError:
            return ()
        for entry in entries:
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                address = Path(entry.path).read_text()
                if address not in found:
                    found.append(address)
        return tuple(sorted(found))
