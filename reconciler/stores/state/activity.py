"""What set each deployment off, and samples of each site's traffic and use over the last
hour (the dashboard's charts)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from reconciler.core.kinds import DeploymentKind
from reconciler.stores.state.connection import Database
from reconciler.stores.state.rows import SampleRow, as_row

TRIGGER_FRESH = 600.0  # seconds a noted trigger waits for the deployment it causes
SAMPLES_KEPT = 3900.0  # seconds of samples kept (an hour, and a little)
BY_KIND = {
    DeploymentKind.REPAIR: "repair: the instance was gone",
    DeploymentKind.WAKE: "request: a sleeping site was asked for",
    DeploymentKind.STOP: "desired file",
}


class Activity(Database):
    # -- triggers --------------------------------------------------------------------------

    def note_trigger(self, project_id: str, what: str, *, keep: bool = False) -> None:
        """Say what the next deployment of a project will be for (``keep``: unless
        something else said so first, e.g. a push found after a webhook's nudge)."""
        verb = "INSERT OR IGNORE" if keep else "INSERT OR REPLACE"
        with self.write() as conn:
            conn.execute(
                f"{verb} INTO triggers (project, what, at) VALUES (?, ?, ?)",
                (project_id, what[:200], time.time()),
            )

    def take_trigger(self, conn: object, project_id: str, kind: DeploymentKind) -> str:
        """What set off a deployment starting now (inside its write): the note left for it,
        else what its kind says (a repair, a wake), else an edit of the desired file."""
        if kind in (DeploymentKind.REPAIR, DeploymentKind.WAKE):
            return BY_KIND[kind]
        row = conn.execute(  # type: ignore[attr-defined]
            "DELETE FROM triggers WHERE project = ? RETURNING what, at", (project_id,)
        ).fetchone()
        if row is not None and time.time() - float(row[1]) < TRIGGER_FRESH:
            return str(row[0])
        return "desired file"

    # -- samples ---------------------------------------------------------------------------

    def add_samples(self, samples: Iterable[SampleRow]) -> int:
        """Record a round of samples; those older than an hour go."""
        rows = [
            (s.project, s.at, s.requests, s.errors, s.seconds, s.memory, s.cpu) for s in samples
        ]
        with self.write() as conn:
            conn.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("DELETE FROM samples WHERE at < ?", (time.time() - SAMPLES_KEPT,))
        return len(rows)

    def samples(self, project_id: str, *, since: float) -> list[SampleRow]:
        rows = self.read(
            "SELECT * FROM samples WHERE project = ? AND at >= ? ORDER BY at", (project_id, since)
        )
        return [as_row(SampleRow, r) for r in rows]
