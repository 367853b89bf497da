"""The edge's settings from the daemon's configuration, shared by the daemon and by
``reconciler edge`` (what a systemd unit runs), so both describe the same edge."""

from __future__ import annotations

from pathlib import Path

from reconciler.core.config import Config, is_loopback
from reconciler.core.fileio import atomic_write
from reconciler.edge.caddy import Paths
from reconciler.edge.config import EdgeSettings
from reconciler.stores.ports import port_is_free
from reconciler.stores.previews import PreviewAddress, choose_preview

CONTROL_PORT_FILE = "control-port"
WAKER_SOCKET = "waker.sock"  # the daemon listens here; the edge asks it to wake a site


def control_port(config: Config, paths: Paths) -> int:
    """The 127.0.0.1 port of the edge's check listener: given, or chosen once (the highest
    free port of the internal range) and kept in ``data/edge/control-port``, so that a
    restart does not change the edge's configuration."""
    if config.edge_control_port:
        return config.edge_control_port
    record = paths.root / CONTROL_PORT_FILE
    try:
        return int(record.read_text().strip())
    except (OSError, ValueError):
        pass
    span = config.internal_port_range
    for port in range(span.last, span.first - 1, -1):
        if port_is_free("127.0.0.1", port):
            paths.prepare()
            atomic_write(record, f"{port}\n".encode())
            return port
    raise RuntimeError(f"no free port in {span} for the edge's check listener")


def preview_address(config: Config, paths: Paths, control: int) -> PreviewAddress:
    """Where previews answer: a port of the internal range below the check listener's,
    on the address sites listen on; with a token when that is beyond loopback."""
    span = config.internal_port_range
    return choose_preview(
        paths.root,
        range(span.first, min(span.last, control - 1) + 1),
        domain=config.preview_domain,
        token=not is_loopback(config.bind_host),
        free=lambda port: port_is_free(config.bind_host, port),
    )


def edge_settings(config: Config) -> EdgeSettings:
    paths = Paths(config.edge_dir)
    paths.prepare()
    control = control_port(config, paths)
    return EdgeSettings(
        admin_socket=paths.socket,
        storage=paths.storage,
        log_file=paths.log,
        access_log=paths.access_log,
        releases=Path(config.releases_dir).absolute(),
        bind_host=config.bind_host,
        control_port=control,
        previews=preview_address(config, paths, control),
        routes=paths.root / "routes",
        port_range=(config.port_range.first, config.port_range.last),
        domains_http_port=config.domains_http_port,
        domains_https_port=config.domains_https_port,
        domains_tls=config.domains_tls,
        acme_email=config.acme_email,
        access_logs=config.access_logs,
        dotfiles=config.dotfiles,
        waker=paths.root / WAKER_SOCKET,
    )
