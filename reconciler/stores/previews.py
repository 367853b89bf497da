"""Where the edge shows kept versions: ``http://<version>.<project>.<domain>:<port>/``.

The port is chosen once (the highest free port of the internal range below the edge's
check listener) and kept in ``data/edge/preview-port``, so the edge's configuration and the
links the API prints stay the same across restarts. When the edge listens beyond loopback a
preview needs a token (``data/edge/preview-token``, 0600): the first request carries it as
``?token=``, the edge answers with a cookie for the rest of the page.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.fileio import atomic_write
from reconciler.core.spec import ProjectId

PORT_FILE = "preview-port"
TOKEN_FILE = "preview-token"  # noqa: S105 (a file name)
COOKIE = "reconciler_preview"


@dataclass(frozen=True)
class PreviewAddress:
    port: int
    domain: str
    token: str | None = None

    def url(self, project_id: ProjectId, version: str) -> str:
        query = f"?token={self.token}" if self.token else ""
        return f"http://{version}.{project_id}.{self.domain}:{self.port}/{query}"


def read_preview(edge_dir: Path, domain: str) -> PreviewAddress | None:
    """The address the edge shows previews at (None: no edge has chosen one)."""
    try:
        port = int((edge_dir / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        token: str | None = (edge_dir / TOKEN_FILE).read_text().strip() or None
    except OSError:
        token = None
    return PreviewAddress(port, domain, token)


def choose_preview(
    edge_dir: Path, ports: range, *, domain: str, token: bool, free: Callable[[int], bool]
) -> PreviewAddress:
    """The preview address, chosen on first use (``free(port)``: can it be bound). A token
    is made when ``token`` and there is none; kept when there is one; removed when not."""
    chosen = read_preview(edge_dir, domain)
    port = chosen.port if chosen is not None else None
    if port is None:
        port = next((p for p in reversed(ports) if free(p)), None)
        if port is None:
            raise RuntimeError(f"no free port in {ports.start}-{ports.stop} for previews")
        atomic_write(edge_dir / PORT_FILE, f"{port}\n".encode())
    path = edge_dir / TOKEN_FILE
    if not token:
        path.unlink(missing_ok=True)
        return PreviewAddress(port, domain)
    value = chosen.token if chosen is not None and chosen.token else secrets.token_urlsafe(24)
    if chosen is None or chosen.token != value:
        atomic_write(path, f"{value}\n".encode())
        os.chmod(path, 0o600)
    return PreviewAddress(port, domain, value)
