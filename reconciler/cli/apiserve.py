"""``reconciler api``: the API sidecar on granian, a process per core.

Chosen by benchmark (figure 5, same run, 1,000 projects, 16 wrk clients on 2 cores): the
same Flask app answered ``GET /api/projects/<id>/production`` with a p99 of 10 ms on granian
with two workers, 23 ms on gunicorn (two workers of eight threads) and 116 ms on waitress
(one process, 36 threads: the threads of one interpreter take turns at the GIL). Granian reads
requests in Rust, asynchronously (a half-sent header costs no thread and is dropped after
``HEADER_TIMEOUT``), and runs the app in each worker's blocking threads, which stream event
streams as waitress did.

``reconciler run`` keeps waitress: it serves the API from a thread of the daemon's process,
which a server of its own processes cannot do.

Every worker builds the app from the same command line (``ARGV``), so it reads the same
token file and desired and data dirs; the read models are per worker and each keeps itself
fresh from the state database as before.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import socket
import sys
import threading
import time
from typing import Any

from reconciler.core.config import Config

logger = logging.getLogger(__name__)

ARGV = "RECONCILER_API_ARGV"  # the command line, for the workers
MAIN = "RECONCILER_API_MAIN"  # the main process's pid: a worker ends when it is gone
WORKERS = max(1, min(4, os.cpu_count() or 1))
HEADER_TIMEOUT = 20_000  # ms a request's headers may take (slowloris)
PARENT_POLL = 0.5  # seconds between a worker's looks at whether the main process is there
PORT_WAIT = 3.0  # seconds a start waits for its port to be free


def make_app() -> Any:
    """In each worker: the app, from the command line the main process was given."""
    from reconciler.api.app import create_app
    from reconciler.cli.main import _prepare, build_parser

    _exit_with(int(os.environ.get(MAIN, "0")) or os.getppid())
    args = build_parser().parse_args(json.loads(os.environ[ARGV]))
    prepared = _prepare(args, api=True)
    if isinstance(prepared, int):
        raise SystemExit(prepared)
    config, token = prepared
    return create_app(config, token=token)


def _exit_with(parent: int) -> None:
    """A worker ends when the main process is gone (SIGKILLed, as without systemd's cgroup
    nothing else stops it): an orphan would hold the port against the API started again."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(config: Config, argv: list[str], log_level: str) -> int:
    """Run the workers until SIGTERM or SIGINT; tell systemd when the port answers and,
    while it does, feed its watchdog."""
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    from reconciler.api.server import SPARE_THREADS
    from reconciler.daemon.sdnotify import Notifier

    if not _free_within(config, PORT_WAIT):
        print(
            f"reconciler: cannot listen on {config.listen_host}:{config.listen_port}: "
            "address already in use",
            file=sys.stderr,
        )
        return 1
    os.environ[ARGV] = json.dumps(argv)
    os.environ[MAIN] = str(os.getpid())
    # fresh interpreters, not forks: a fork while another thread holds a lock (an import,
    # logging) leaves that lock held for ever in the child
    multiprocessing.set_start_method("spawn", force=True)
    server = Server(
        "reconciler.cli.apiserve:make_app",
        factory=True,
        address=config.listen_host,
        port=config.listen_port,
        interface=Interfaces.WSGI,
        workers=WORKERS,
        blocking_threads=config.stream_cap + SPARE_THREADS,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_TIMEOUT),
        respawn_failed_workers=True,
        websockets=False,
        log_level=max(LogLevels.warning, LogLevels(log_level.lower()), key=_severity),
        log_access=False,
    )
    notifier = Notifier()
    done = threading.Event()
    threading.Thread(target=_tell_systemd, args=(notifier, config, done), daemon=True).start()
    try:
        server.serve()
    finally:
        done.set()
        notifier.notify("STOPPING=1")
    return 0


def _severity(level: Any) -> int:
    return int(logging.getLevelName(str(level.value).upper()))


def _free_within(config: Config, seconds: float) -> bool:
    """The port is free, or frees up within ``seconds`` (the workers of an API killed just
    before end within ``PARENT_POLL``)."""
    deadline = time.monotonic() + seconds
    while not _free(config):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _free(config: Config) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in config.listen_host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.listen_host, config.listen_port))
        except OSError:
            return False
    return True


def _answers(config: Config) -> bool:
    host = "127.0.0.1" if config.listen_host in ("0.0.0.0", "") else config.listen_host
    try:
        with socket.create_connection((host.strip("[]"), config.listen_port), timeout=2):
            return True
    except OSError:
        return False


def _tell_systemd(notifier: Any, config: Config, done: threading.Event) -> None:
    while not done.is_set() and not _answers(config):
        time.sleep(0.05)
    if done.is_set():
        return
    notifier.notify("READY=1", f"STATUS=API listening on {config.listen_host}:{config.listen_port}")
    step = min(1.0, notifier.watchdog_interval or 1.0)
    while not done.wait(step):
        if notifier.watchdog_interval is not None and _answers(config):
            notifier.notify("WATCHDOG=1")


def argv_of(args: argparse.Namespace) -> list[str]:
    """The command line ``main`` was given (kept on ``args``)."""
    return list(getattr(args, "argv", None) or sys.argv[1:])
