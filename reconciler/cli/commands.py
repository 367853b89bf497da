"""The operator's CLI: status, deploy, start, stop, pin, unpin, history, rollback, logs,
secrets.

Exit codes, the same for every command: 0 ok; 1 the operation failed or found a failure (a
failed deploy or rollback, an unknown project, an unreachable API, a project whose status is
``failed``, an invalid desired file, any of several projects); 2 usage (bad arguments, ids or
hashes; and ``plan``: changes pending, as ``terraform plan -detailed-exitcode``); 130
interrupted. A pipe closed early (``status | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from reconciler.cli.client import Client, LocalClient, RemoteClient
from reconciler.core.config import DataLayout, env
from reconciler.core.spec import is_hash8
from reconciler.readside.terms import ErrorKind, Event, OperationError
from reconciler.readside.views import INVALID_FILE

OK, FAILED, USAGE = 0, 1, 2
PENDING = 2  # reconciler plan: changes pending (as terraform plan -detailed-exitcode)
READY, STOPPED = "production.ready", "production.stopped"
STEP = {
    "production.building": "build",
    "production.starting": "start",
    "production.ready": "ready",
    "production.error": "error",
    "production.stopping": "stop",
    "production.stopped": "stopped",
    "production.cancelled": "cancel",
    "production.waiting": "wait",
}


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--desired", default=env("DESIRED", "desired"), help="desired-state dir (local)"
    )
    parser.add_argument("--data", default=env("DATA", "data"), help="data dir (local)")
    parser.add_argument("--api", default=env("API"), metavar="URL", help="talk to this API instead")
    parser.add_argument(
        "--token-file", default=env("API_TOKEN_FILE"), help="bearer token file (--api)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub: Any) -> None:
    status = sub.add_parser("status", help="production status of one project or all")
    status.add_argument("project", nargs="?")
    add_client_options(status)
    status.set_defaults(func=run_command(cmd_status))

    for name, command, text in (
        ("deploy", cmd_deploy, "build and deploy the latest source (a pin is lifted)"),
        ("start", cmd_start, "run the version the file names, without a new build"),
        ("stop", cmd_stop, "stop production (the version is kept)"),
    ):
        action = sub.add_parser(name, help=f"{text}; several ids, or --all")
        action.add_argument("projects", nargs="*", metavar="ID")
        action.add_argument("--all", action="store_true", help="every project")
        action.add_argument("--follow", "-f", action="store_true", help="show live progress")
        add_client_options(action)
        action.set_defaults(func=run_command(command))

    pin = sub.add_parser("pin", help="hold a project at a kept version (following stops)")
    pin.add_argument("project", metavar="ID")
    pin.add_argument("hash", metavar="HASH")
    pin.add_argument("--force", action="store_true", help="a version that never served too")
    add_client_options(pin)
    pin.set_defaults(func=run_command(cmd_pin))

    unpin = sub.add_parser("unpin", help="back to the latest version (and to following)")
    unpin.add_argument("project", metavar="ID")
    add_client_options(unpin)
    unpin.set_defaults(func=run_command(cmd_unpin))

    plan = sub.add_parser(
        "plan",
        help="what the next reconcile would do, without doing it (exit 2: changes pending)",
    )
    plan.add_argument("project", nargs="?")
    plan.add_argument(
        "--desired", default=env("DESIRED", "desired"), help="desired-state dir (this host's)"
    )
    plan.add_argument("--data", default=env("DATA", "data"), help="data dir (this host's)")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(func=run_command(cmd_plan), api=None, token_file=None)

    history = sub.add_parser("history", help="kept versions, newest first")
    history.add_argument("project")
    add_client_options(history)
    history.set_defaults(func=run_command(cmd_history))

    rollback = sub.add_parser("rollback", help="run a kept version (and wait until it serves)")
    rollback.add_argument("project")
    rollback.add_argument("hash", metavar="HASH")
    rollback.add_argument("--force", action="store_true", help="a version that never served too")
    add_client_options(rollback)
    rollback.set_defaults(func=run_command(cmd_rollback))

    logs = sub.add_parser("logs", help="build and app logs of the current release")
    logs.add_argument("project")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing the app log")
    logs.add_argument("--lines", "-n", type=int, default=50, help="lines of each log (default 50)")
    logs.add_argument(
        "--log",
        choices=("build", "app", "access", "both"),
        default="both",
        help="both = build and app; access = the edge's access log of the site (JSON lines)",
    )
    add_client_options(logs)
    logs.set_defaults(func=run_command(cmd_logs))

    register_sources(sub)
    register_secrets(sub)


def register_sources(sub: Any) -> None:
    """The commands about a project's source and its push hooks."""
    secret = sub.add_parser(
        "hook-secret",
        help="print (or --rotate) the webhook secret of a project (or _desired) and its URL",
    )
    secret.add_argument("project", metavar="ID")
    secret.add_argument("--rotate", action="store_true", help="replace it: old signatures fail")
    secret.add_argument("--data", default=env("DATA", "data"), help="data dir")
    secret.add_argument("--api-url", default=env("API"), help="the API's public URL, to print")
    secret.set_defaults(func=cmd_hook_secret)

    detect = sub.add_parser(
        "detect", help="what a deploy of the app in DIR would build and start (reads files only)"
    )
    detect.add_argument("path", metavar="DIR")
    detect.add_argument("--json", action="store_true", help="machine-readable output")
    detect.set_defaults(func=cmd_detect)

    new = sub.add_parser("new", help="write desired/ID.yaml for the app in --source, to edit")
    new.add_argument("project", metavar="ID")
    new.add_argument("--source", required=True, metavar="DIR", help="the app's source dir")
    new.add_argument("--desired", default=env("DESIRED", "desired"), help="desired dir")
    new.set_defaults(func=cmd_new)

    init_repo = sub.add_parser(
        "init-repo",
        help="make a bare git repository on this host that deploys ID on every push",
    )
    init_repo.add_argument("project", metavar="ID")
    init_repo.add_argument("--desired", default=env("DESIRED", "desired"), help="desired dir")
    init_repo.add_argument("--data", default=env("DATA", "data"), help="data dir")
    init_repo.add_argument("--branch", default="main", help="the branch that deploys")
    init_repo.set_defaults(func=cmd_init_repo)


def cmd_hook_secret(args: argparse.Namespace) -> int:
    from reconciler.core.spec import InvalidProjectId, check_project_id
    from reconciler.sources import hooks

    name = args.project
    if name == "_notify":  # the daemon's notification signing secret
        value = hooks.make_secret(DataLayout(Path(args.data).absolute()).secrets, name,
                                  rotate=args.rotate)  # fmt: skip
        print(f"secret: {value}")
        print("notifications carry X-Reconciler-Signature-256: sha256=<HMAC-SHA256 of the body>")
        return 0
    if name != hooks.DESIRED:
        try:
            check_project_id(name)
        except InvalidProjectId as exc:
            print(f"reconciler: {exc}", file=sys.stderr)
            return 2
    secret_dir = DataLayout(Path(args.data).absolute()).secrets
    value = hooks.make_secret(secret_dir, name, rotate=args.rotate)
    base = (args.api_url or "http://127.0.0.1:3000").rstrip("/")
    path = "/api/hooks/desired" if name == hooks.DESIRED else f"/api/projects/{name}/hooks/git"
    print(f"secret: {value}")
    print(f"url:    {base}{path}")
    print("GitHub/Gitea/Forgejo: content type application/json, this secret; GitLab: the "
          "secret token field. Push events only.")  # fmt: skip
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from reconciler.core.detect import DetectError, detect

    try:
        found = detect(Path(args.path))
    except DetectError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return FAILED
    if args.json:
        _print_json(found.describe(), sys.stdout)
        return OK
    rows = [
        ("app", f"{found.kind} ({', '.join(found.seen)})"),
        ("runtime", str(found.runtime)),
        ("build", found.build or "none: the files are used as they are"),
        ("output", found.output or "-"),
        ("start", found.start or "none: a static site, served by the edge"),
        ("port", str(found.port) if found.port else "$PORT" if found.start else "-"),
        ("health", found.health),
    ]
    for name, value in rows:
        print(f"{name + ':':9}{value}")
    for note in found.notes:
        print(f"note:    {note}")
    return OK


def cmd_new(args: argparse.Namespace) -> int:
    """Write a desired file for the app in --source: stopped, with the detected commands
    spelled out, to read and edit before ``reconciler deploy ID``."""
    from reconciler.core.detect import DetectError, detect
    from reconciler.core.fileio import atomic_write
    from reconciler.core.spec import InvalidProjectId, check_project_id

    try:
        project_id = check_project_id(args.project)
        found = detect(Path(args.source))
    except (InvalidProjectId, DetectError) as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return USAGE if isinstance(exc, InvalidProjectId) else FAILED
    desired = Path(args.desired).absolute()
    path = desired / f"{project_id}.yaml"
    if path.exists() or (desired / f"{project_id}.yml").exists():
        print(f"reconciler: {path} exists; edit it, or pick another id", file=sys.stderr)
        return FAILED
    source = os.path.relpath(Path(args.source).absolute(), desired)
    desired.mkdir(parents=True, exist_ok=True)
    atomic_write(path, found.desired_yaml(source).encode())
    print(f"wrote {path} ({found.kind}); read it, then: reconciler deploy {project_id}")
    return OK


def cmd_init_repo(args: argparse.Namespace) -> int:
    """A bare repository under data/repos/ID.git; the desired file (written when there is
    none) follows its branch, so ``git push`` deploys with no hook script."""
    import subprocess

    from reconciler.core.fileio import atomic_write
    from reconciler.core.spec import InvalidProjectId, check_project_id

    try:
        project_id = check_project_id(args.project)
    except InvalidProjectId as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return 2
    repo = DataLayout(Path(args.data).absolute()).repos / f"{project_id}.git"
    if not (repo / "HEAD").is_file():
        repo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "init", "--quiet", "--bare", f"--initial-branch={args.branch}", str(repo)],
            check=True,
        )
        print(f"created {repo}")
    else:
        print(f"{repo} exists")
    desired = Path(args.desired).absolute()
    path = desired / f"{project_id}.yaml"
    if not (path.exists() or (desired / f"{project_id}.yml").exists()):
        desired.mkdir(parents=True, exist_ok=True)
        atomic_write(
            path,
            (
                f"source:\n  git: {repo}\n  ref: {args.branch}\n"
                "production:\n  state: running\n  follow: true\n"
            ).encode(),
        )
        print(f"wrote {path}: follows {args.branch}")
    else:
        print(f"{path} exists; to deploy on push, give it:")
        print(f"  source: {{git: {repo}, ref: {args.branch}}}\n  production: {{follow: true}}")
    print("push to deploy:")
    print(f"  git remote add production {repo}   # or ssh://<this host>{repo}")
    print(f"  git push production HEAD:{args.branch}")
    return 0


def make_client(args: argparse.Namespace) -> Client:
    if args.api:
        token = os.environ.get("RECONCILER_API_TOKEN")
        if args.token_file:
            token = Path(args.token_file).read_text().strip()
        return RemoteClient(args.api, token=token)
    return LocalClient(Path(args.desired).absolute(), Path(args.data).absolute())


def run_command(
    command: Callable[[Client, argparse.Namespace, TextIO], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        out = sys.stdout
        if hasattr(args, "projects") and bool(args.projects) == bool(args.all):
            # a usage error before anything is opened: no ids, or ids and --all
            print("reconciler: name a project (or several), or --all", file=sys.stderr)
            return USAGE
        try:
            client = make_client(args)
        except (OperationError, OSError) as exc:
            print(f"reconciler: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return FAILED
        try:
            return command(client, args, out)
        except OperationError as exc:
            if args.json:
                print(json.dumps({"error": exc.message, "kind": exc.kind.value}), file=out)
            else:
                print(f"reconciler: {exc.message}", file=sys.stderr)
            return USAGE if exc.kind == ErrorKind.INVALID else FAILED
        except KeyboardInterrupt:
            return 130
        finally:
            client.close()

    return run


def _print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, indent=2), file=out)


def _status_lines(project: str, status: dict[str, Any], *, file_error: str = "") -> list[str]:
    """A project's status as an operator reads it. ``file_error``: the invalid desired file's
    error, printed once by the caller (the status repeats it while the last good spec runs)."""
    line = f"{project}  {status['status']}"
    if status.get("hash"):
        line += f"  {status['hash']}"
        if status.get("config"):
            line += f" (config {status['config']})"
    if status.get("url"):
        line += f"  {status['url']}"
    if status.get("replicas"):
        line += f"  replicas {status['replicas']}"
    usage = status.get("usage") or {}
    if usage.get("memory") is not None:
        line += f"  mem {usage['memory'] / 2**20:.0f}M"
    if usage.get("cpu") is not None:
        line += f" cpu {usage['cpu']:g}%"
    if status.get("startedAt"):
        line += f"  since {status['startedAt']}"
    lines = [line]
    if status.get("pinned"):
        lines.append(f"  pinned to {status['pinned']} (not following): `reconciler unpin "
                     f"{project}` goes back to the latest")  # fmt: skip
    if status.get("commit"):
        lines.append(f"  commit: {status['commit'][:12]} {status.get('subject') or ''}".rstrip())
    if status.get("app"):
        lines.append(f"  app: {_app_line(status['app'])}")
    source = status.get("source")
    if source and source.get("error"):
        lines.append(f"  source: {source['error']}")
    elif source and source.get("tip") and source["tip"] != status.get("commit"):
        lines.append(f"  source: now at {str(source['tip'])[:12]}")
    job = status.get("activeJob")
    if job:
        lines.append(f"  job: {job['type']} ({job['state']})")
    error = status.get("error")
    if error and not (file_error and error.endswith(file_error)):
        first, *rest = str(error).splitlines()
        lines.append(f"  error: {first}")
        lines.extend(f"    {extra}" for extra in rest[-10:])
    if status["status"] == "failed" and status.get("url"):
        lines.append(f"  still serving: {status['hash']} at {status['url']}")
    for kept in status.get("standby") or []:
        memory = f" ({kept['memory'] / 2**20:.0f}M)" if kept.get("memory") else ""
        lines.append(f"  standby: {kept['hash']}{memory}, kept running: a rollback to it is "
                     "a switch (rollback.window)")  # fmt: skip
    if status.get("note"):
        lines.append(f"  note: {status['note']}")
    return lines


def cmd_status(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """One project (1 when it failed), or every desired file (1 when any project failed or
    any file is invalid), with the daemon and the edge first."""
    if args.project:
        status = client.status(args.project)
        if args.json:
            _print_json(status, out)
        else:
            print("\n".join(_status_lines(args.project, status)), file=out)
        invalid = str(status.get("error") or "").startswith(INVALID_FILE)
        return FAILED if status["status"] == "failed" or invalid else OK
    listing = client.projects()
    bad = any(
        not item["valid"]
        or (item["production"] is not None and item["production"]["status"] == "failed")
        for item in listing["projects"]
    )
    if args.json:
        _print_json(listing, out)
        return FAILED if bad else OK
    health = client.health()
    daemon = health.get("daemon")
    if daemon is not None:
        print(f"daemon: {daemon['message']}", file=out)
    edge = health.get("edge")
    if edge is not None and edge.get("mode") != "off":
        line = f"edge: {edge['status']} (caddy {edge.get('version') or '?'}, pid {edge.get('pid')}"
        line += f", {edge.get('sites', 0)} site(s))"
        if edge.get("error"):
            line += f"  error: {edge['error']}"
        print(line, file=out)
    if not listing["projects"]:
        print("no desired files", file=out)
    for item in listing["projects"]:
        if item["production"] is not None:
            lines = _status_lines(item["id"], item["production"], file_error=item["error"] or "")
            print("\n".join(lines), file=out)
        if item["error"]:
            print(f"  invalid: {item['error']}", file=out)
    return FAILED if bad else OK


def cmd_deploy(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    return _act(client, args, out, client.deploy, READY)


def cmd_start(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    return _act(client, args, out, client.start, READY)


def cmd_stop(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    return _act(client, args, out, client.stop, STOPPED)


def _targets(client: Client, args: argparse.Namespace) -> list[str]:
    if args.all:
        return [p["id"] for p in client.projects()["projects"] if p["id"] and p["valid"]]
    return list(dict.fromkeys(args.projects))


def _act(
    client: Client,
    args: argparse.Namespace,
    out: TextIO,
    write: Callable[[str], dict[str, Any]],
    want: str,
) -> int:
    """Edit every project's file first (each is a write; none waits for another), then,
    with --follow, follow them all at once. 1 when any of them failed."""
    targets = _targets(client, args)
    if len(targets) == 1:
        status = write(targets[0])
        if args.follow:
            return _follow(client, targets[0], args, out, want)
        _show(targets[0], status, args, out)
        return OK
    result, asked = OK, []
    for project in targets:
        try:
            status = write(project)
        except OperationError as exc:
            result = FAILED
            print(f"{project}: {exc.message}", file=out if args.json else sys.stderr)
            continue
        asked.append(project)
        if not args.follow:
            _show(project, status, args, out)
    if args.follow and asked:
        result = max(result, _follow_all(client, asked, args, out, want))
    return result


def _show(project: str, status: dict[str, Any], args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        _print_json({"id": project, **status}, out)
    else:
        print("\n".join(_status_lines(project, status)), file=out)


def _follow_all(
    client: Client, projects: list[str], args: argparse.Namespace, out: TextIO, want: str
) -> int:
    """Follow several projects side by side; each line names its project."""
    import threading

    results: dict[str, int] = {}
    lock = threading.Lock()

    class Prefixed(io.TextIOBase):
        def __init__(self, project: str) -> None:
            self.project = project

        def write(self, text: str) -> int:
            with lock:
                for line in text.splitlines(keepends=True):
                    out.write(line if args.json else f"{self.project}: {line}")
                out.flush()
            return len(text)

    def one(project: str) -> None:
        try:
            results[project] = _follow(client, project, args, Prefixed(project), want)  # type: ignore[arg-type]
        except OperationError as exc:
            Prefixed(project).write(f"{exc.message}\n")
            results[project] = FAILED

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in projects]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = sorted(p for p, code in results.items() if code != OK)
    if not args.json:
        print(f"{len(projects) - len(failed)} of {len(projects)} done"
              + (f"; failed: {', '.join(failed)}" if failed else ""), file=out)  # fmt: skip
    return FAILED if failed else OK


def cmd_pin(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _check_hash(args.project, args.hash)
    status = client.pin(args.project, args.hash, force=args.force)
    _show(args.project, status, args, out)
    return OK


def cmd_unpin(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _show(args.project, client.unpin(args.project), args, out)
    return OK


def _follow(client: Client, project: str, args: argparse.Namespace, out: TextIO, want: str) -> int:
    """Print the progress of what was just asked; end with the URL or ``Stopped`` (0), or the
    error (1). The stream ends on its own when the daemon is not running or the wait is
    longer than the project's timeouts allow; that is a 1 with the reason."""
    started = said = time.monotonic()
    result = FAILED
    for event in client.follow(project):
        elapsed = time.monotonic() - started
        if event is None:  # a keep-alive; say something after 15 s of silence
            if not args.json and time.monotonic() - said >= 15:
                print(f"[{elapsed:6.1f}s] ...     still waiting", file=out, flush=True)
                said = time.monotonic()
            continue
        said = time.monotonic()
        if args.json:
            print(
                json.dumps({"id": event.id, "event": event.type, "data": event.data}),
                file=out,
                flush=True,
            )
        else:
            _render(event, elapsed, out)
        if event.type == READY:
            result = OK if want == READY else FAILED
            if not args.json:
                print(f"Deployed {event.data.get('hash')}: {event.data.get('url')}", file=out)
        elif event.type == STOPPED:
            result = OK if want == STOPPED else FAILED
            if not args.json:
                print(f"Stopped {project}", file=out)
        elif event.type == "production.error":
            result = FAILED
            if not args.json:
                print(f"Failed: {event.data.get('error')}", file=out)
        if event.type == "stream.end":
            if event.data.get("reason"):
                result = FAILED
                if not args.json:
                    print(f"Not done yet: {event.data.get('message')}", file=out)
            break
        out.flush()
    return result


def _render(event: Event, elapsed: float, out: TextIO) -> None:
    if event.type == "stream.end":
        return
    step = STEP.get(event.type, event.type.removeprefix("production."))
    data = event.data
    if event.type == "production.ready":
        text = f"running {data.get('hash')} at {data.get('url')}"
    elif event.type == "production.error":
        text = str(data.get("error", "")).splitlines()[0] if data.get("error") else "failed"
    else:
        text = str(data.get("message") or data.get("status") or data)
    print(f"[{elapsed:6.1f}s] {step:<7} {text}", file=out)


def cmd_plan(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """Exit 0: nothing to do; 2: changes pending (as ``terraform plan -detailed-exitcode``).
    It reads the stores on this host (the daemon's own inputs), so it has no ``--api``."""
    assert isinstance(client, LocalClient)
    if args.project:
        ids = [args.project]
    else:
        ids = [p["id"] for p in client.projects()["projects"] if p["id"] is not None]
    plans = [client.plan(project) for project in ids]
    if args.json:
        _print_json({"projects": plans} if not args.project else plans[0], out)
    else:
        for plan in plans:
            if not plan["pending"]:
                print(f"{plan['project']}: up to date", file=out)
                continue
            kind = f" ({plan['deployment']})" if plan["deployment"] else ""
            print(f"{plan['project']}{kind}:", file=out)
            for step in plan["steps"]:
                print(f"  - {step}", file=out)
    return PENDING if any(plan["pending"] for plan in plans) else OK


def cmd_history(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    history = client.history(args.project)
    if args.json:
        _print_json(history, out)
        return OK
    if not history["versions"]:
        print(f"{args.project}: no kept versions", file=out)
    for version in history["versions"]:
        mark = "*" if version["isActive"] else " "
        active = "  (active)" if version["isActive"] else ""
        if version["isActive"] and version.get("config"):
            active = f"  (active, config {version['config']})"
        commit = (
            f"  {version['commit'][:12]} {version.get('subject') or ''}"
            if version.get("commit")
            else ""
        )
        app = f"  [{version['app']['kind']}]" if version.get("app") else ""
        if not version.get("served"):
            failure = (version.get("failure") or "").splitlines()
            app += f"\n      never served: {failure[0]}" if failure else "\n      never served"
        preview = f"\n      preview: {version['previewUrl']}" if version.get("previewUrl") else ""
        print(
            f"{mark} {version['hash']}  {version['createdAt']}{active}{commit}{app}".rstrip()
            + preview,
            file=out,
        )
    return OK


def _app_line(app: dict[str, Any]) -> str:
    """How the serving version was found to build and start: ``python (requirements.txt,
    app.py); starts: exec .venv/bin/python -m gunicorn ...``."""
    line = f"{app['kind']} ({', '.join(app.get('seen') or [])})"
    if app.get("start"):
        line += f"; starts: {app['start']}"
    elif app["kind"] == "docker":
        line += "; the docker runtime: runs the image's command"
    else:
        line += "; a static site"
    if app.get("release"):
        line += f"; release phase: {app['release']}"
    return line


def _check_hash(project: str, version: str) -> None:
    if not is_hash8(version):
        raise OperationError(
            ErrorKind.INVALID,
            f"HASH must be a version: 8 lowercase hex characters (`reconciler history "
            f"{project}` lists the kept ones), not {version!r}",
        )


def cmd_rollback(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _check_hash(args.project, args.hash)
    result = client.rollback(args.project, args.hash, force=args.force)
    if args.json:
        _print_json(result, out)
    elif result.get("success"):
        print(result.get("message"), file=out)
    else:
        print(f"Rollback failed: {result.get('error')}", file=out)
    return OK if result.get("success") else FAILED


def _which(name: str, chunk: dict[str, Any]) -> str:
    """Which run a log chunk is of, in an operator's words."""
    if name == "access":
        return "the edge, every version"
    if chunk["hash"]:
        return f"version {chunk['hash']}"
    if name == "build" and (chunk["text"] or int(chunk["offset"])):
        return "the last build, which failed (no version)"
    return "nothing yet (no build has run)"


def cmd_logs(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    names = ["build", "app"] if args.log == "both" else [args.log]
    offsets: dict[str, int] = {}
    for name in names:
        chunk = client.log(args.project, name, offset=None, tail=max(0, args.lines))
        offsets[name] = int(chunk["offset"])
        if args.json:
            print(json.dumps(chunk), file=out)
            continue
        print(f"==> {name}.log: {_which(name, chunk)} <==", file=out)
        if chunk["text"]:
            out.write(chunk["text"] if chunk["text"].endswith("\n") else chunk["text"] + "\n")
    if not args.follow:
        return OK
    follow_name = "app" if "app" in names else names[0]
    offset = offsets[follow_name]
    version = client.log(args.project, follow_name, offset=offset, tail=0)["hash"]
    while True:
        out.flush()
        time.sleep(0.5)
        chunk = client.log(args.project, follow_name, offset=offset, tail=0)
        if chunk["hash"] != version or int(chunk["offset"]) < offset:
            version, offset = chunk["hash"], 0  # a new release: read its log from the start
            if not args.json:
                print(f"==> {follow_name}.log: version {version} <==", file=out)
            continue
        offset = int(chunk["offset"])
        if chunk["text"]:
            if args.json:
                print(json.dumps(chunk), file=out)
            else:
                out.write(chunk["text"])


def register_secrets(sub: Any) -> None:
    """``reconciler secret set|list|rm``: values an env refers to as ``{secret: NAME}``."""
    secret = sub.add_parser(
        "secret", help="secrets for env: {NAME: {secret: name}} (set, list, rm)"
    )
    verbs = secret.add_subparsers(dest="verb", required=True, metavar="VERB")
    put = verbs.add_parser("set", help="set a secret's value (read from stdin, or --from-file)")
    put.add_argument("name", metavar="NAME")
    put.add_argument("--from-file", metavar="FILE", help="the value is this file's content")
    add_client_options(put)
    put.set_defaults(func=run_command(cmd_secret_set))
    listing = verbs.add_parser("list", help="every secret: name, revision, who refers to it")
    add_client_options(listing)
    listing.set_defaults(func=run_command(cmd_secret_list))
    remove = verbs.add_parser("rm", help="delete a secret")
    remove.add_argument("name", metavar="NAME")
    add_client_options(remove)
    remove.set_defaults(func=run_command(cmd_secret_rm))


def cmd_secret_set(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """The value never goes on the command line (where ``ps`` and the shell history see
    it): stdin (a prompt without echo at a terminal), or a file."""
    if args.from_file:
        value = Path(args.from_file).read_text().removesuffix("\n")
    elif sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value of {args.name}: ")
    else:
        value = sys.stdin.read().removesuffix("\n")
    changed = client.set_secret(args.name, value)
    if args.json:
        _print_json({"name": args.name, "changed": changed}, out)
    else:
        print(f"{args.name}: {'set' if changed else 'unchanged (the same value)'}", file=out)
    return OK


def cmd_secret_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    found = client.secrets()
    if args.json:
        _print_json({"secrets": found}, out)
        return OK
    if not found:
        print("no secrets", file=out)
    for item in found:
        used = ", ".join(item["usedBy"]) or "nothing"
        when = (
            f"set {item['updatedAt']} (rev {item['revision']})" if item["revision"] else "NOT SET"
        )
        print(f"{item['name']}  {when}  used by {used}", file=out)
    return FAILED if any(i["revision"] is None for i in found) else OK


def cmd_secret_rm(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    client.delete_secret(args.name)
    print(f"{args.name}: deleted", file=out)
    return OK
