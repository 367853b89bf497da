"""The edge's whole configuration as a pure function: ``edge_config(settings, sites) -> dict``.

No I/O: the same sites give the same JSON, so the manager can compare it with what Caddy
reports and load it only when they differ. Nothing here changes when a site's version
changes: versions switch by links the routes read on every request (``current`` for static
releases, ``slot`` for dynamic ones), so a deploy or rollback never reloads Caddy. A load
happens when the set of served sites, their ports or their domains change.

Per site (``site-<id>``), one server on its stable public port (its access log lines carry
``"logger": "http.log.access.site-<id>"`` in the one shared access log):

- static: ``file_server`` rooted at ``<releases>/<id>/current/dist``;
- dynamic: two routes, the first taken when ``<id>/slot/a`` exists (``slot -> slots/a``), each
  proxying to its slot's internal port and naming the slot in a ``Reconciler-Slot`` header;
- service (swarm runtime): round robin over entries that each dial the address in a file
  under ``<id>/tasks/``, retried on the next when one refuses; the daemon rewrites the files
  as the tasks move, so a rollout does not reload the edge either.

The control server (127.0.0.1 only) serves ``/<id>/preview/dist/...`` for the check a static
release passes before it goes live. Sites with ``domains`` are also routed by Host on one
shared HTTPS listener with automatic certificates (ACME, or Caddy's internal CA).
Every value that reaches this function was validated where it entered (project ids,
hostnames, ports); paths are built only under ``releases``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reconciler.core.kinds import ServeMode
from reconciler.core.spec import PROJECT_ID, ProjectId, ProjectSpec
from reconciler.stores.releases import TASKS

SLOT_HEADER = "Reconciler-Slot"
PREVIEW_PATTERN = rf"^/{PROJECT_ID}/preview/dist(/.*)?$"


@dataclass(frozen=True)
class EdgeSettings:
    admin_socket: Path
    storage: Path
    log_file: Path
    releases: Path
    access_log: Path
    bind_host: str
    control_port: int
    domains_http_port: int = 80
    domains_https_port: int = 443
    domains_tls: Literal["acme", "internal"] = "acme"
    acme_email: str | None = None
    log_roll_mb: int = 10
    log_roll_keep: int = 5
    access_logs: bool = True  # one JSON line per request (costs ~20 % of static throughput)


@dataclass(frozen=True)
class Site:
    """What the edge serves for one project."""

    project_id: ProjectId
    port: int
    mode: ServeMode
    slots: tuple[int, int] | None = None  # dynamic: the internal ports of slots a and b
    domains: tuple[str, ...] = ()
    fanout: int = 0  # service: the upstream entries its tasks are spread over


def site_of(
    project_id: ProjectId,
    port: int,
    mode: ServeMode,
    spec: ProjectSpec,
    slots: tuple[int, int] | None = None,
) -> Site:
    """The site a project's spec makes at ``port`` (the one place a ``Site`` is made)."""
    fanout = service_fanout(spec.deploy.replicas) if mode == ServeMode.SERVICE else 0
    return Site(
        project_id,
        port,
        mode,
        slots if mode == ServeMode.DYNAMIC else None,
        tuple(spec.domains),
        fanout,
    )


def server_name(project_id: str) -> str:
    return f"site-{project_id}"


def admin_config(settings: EdgeSettings) -> dict[str, Any]:
    """The admin endpoint: a unix socket only (its directory is 0700), never TCP."""
    return {
        "listen": f"unix/{settings.admin_socket}",
        "origins": ["localhost"],
        "config": {"persist": False},
    }


def _writer(settings: EdgeSettings, filename: Path) -> dict[str, Any]:
    return {
        "output": "file",
        "filename": str(filename),
        "roll_size_mb": settings.log_roll_mb,
        "roll_keep": settings.log_roll_keep,
    }


def _site_routes(settings: EdgeSettings, site: Site) -> list[dict[str, Any]]:
    root = settings.releases / site.project_id
    if site.mode == ServeMode.STATIC:
        return [{"handle": [{"handler": "file_server", "root": str(root / "current" / "dist")}]}]
    if site.mode == ServeMode.SERVICE:
        return _service_routes(root, site)
    if site.slots is None:
        raise ValueError(f"dynamic site {site.project_id} has no slot ports")
    routes = []
    for name, port in zip(("a", "b"), site.slots, strict=True):
        route: dict[str, Any] = {
            "handle": [
                {"handler": "headers", "response": {"set": {SLOT_HEADER: [name]}}},
                {"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{port}"}]},
            ],
            "terminal": True,
        }
        if name == "a":
            route["match"] = [{"file": {"root": str(root), "try_files": ["slot/a"]}}]
        routes.append(route)
    return routes


SERVICE_TRY_DURATION = "5s"  # a task that went away: the request is tried on the others
FANOUT_MAX = 64


def service_fanout(replicas: int) -> int:
    """How many upstream entries a service's site has: twice its replicas (a rollout runs
    one task more), at least 2. A change of replicas is a load; a change of tasks is not."""
    return min(FANOUT_MAX, max(2, 2 * replicas))


def _service_routes(root: Path, site: Site) -> list[dict[str, Any]]:
    """Round robin over ``fanout`` entries, each dialing the address in ``tasks/<i>`` (the
    daemon rewrites those files as Swarm starts and stops tasks, so a rollout never reloads
    the edge). A task that went away refuses the connection: that request is tried on the
    next entry. Without ``tasks/0`` (no task runs) the site answers 503."""
    tasks = root / TASKS
    proxy = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"{{file.{tasks / str(i)}}}"} for i in range(site.fanout)],
        "load_balancing": {
            "selection_policy": {"policy": "round_robin"},
            "try_duration": SERVICE_TRY_DURATION,
            "try_interval": "10ms",
        },
    }
    return [
        {
            "match": [{"file": {"root": str(root), "try_files": [f"{TASKS}/0"]}}],
            "handle": [proxy],
            "terminal": True,
        },
        {
            "handle": [
                {
                    "handler": "static_response",
                    "status_code": 503,
                    "body": f"no task of {site.project_id} is running\n",
                }
            ]
        },
    ]


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def edge_config(settings: EdgeSettings, sites: list[Site]) -> dict[str, Any]:
    ordered = sorted(sites, key=lambda s: s.project_id)
    logs: dict[str, Any] = {
        "default": {
            "writer": _writer(settings, settings.log_file),
            "encoder": {"format": "json"},
            "exclude": ["http.log.access", "admin.api"],
        }
    }
    if settings.access_logs and sites:
        # One writer for every site (a writer per site made each load reopen 1,000 files):
        # each line names its site in "logger" (http.log.access.site-<id>).
        logs["access"] = {
            "writer": _writer(settings, settings.access_log),
            "encoder": {"format": "json"},
            "include": ["http.log.access"],
        }
    servers: dict[str, Any] = {
        "control": {
            "listen": [_listen("127.0.0.1", settings.control_port)],
            "automatic_https": {"disable": True},
            "routes": [
                {
                    "match": [{"path_regexp": {"pattern": PREVIEW_PATTERN}}],
                    "handle": [{"handler": "file_server", "root": str(settings.releases)}],
                    "terminal": True,
                },
                {"handle": [{"handler": "static_response", "status_code": 404}]},
            ],
        }
    }
    host_routes: list[dict[str, Any]] = []
    host_loggers: dict[str, list[str]] = {}
    for site in ordered:
        name = server_name(site.project_id)
        routes = _site_routes(settings, site)
        servers[name] = {
            "listen": [_listen(settings.bind_host, site.port)],
            "automatic_https": {"disable": True},
            "routes": routes,
        }
        if settings.access_logs:
            servers[name]["logs"] = {"default_logger_name": name}
        if site.domains:
            host_routes.append(
                {
                    "match": [{"host": list(site.domains)}],
                    "handle": [{"handler": "subroute", "routes": routes}],
                    "terminal": True,
                }
            )
            if settings.access_logs:
                for domain in site.domains:
                    host_loggers[domain] = [name]
    # metrics: per-site request counts and latencies (label server="site-<id>") at the
    # admin endpoint's /metrics, which the API's /metrics passes on
    apps: dict[str, Any] = {"http": {"servers": servers, "metrics": {}}}
    if host_routes:
        apps["http"]["http_port"] = settings.domains_http_port
        apps["http"]["https_port"] = settings.domains_https_port
        servers["domains"] = {"listen": [f":{settings.domains_https_port}"], "routes": host_routes}
        if host_loggers:
            servers["domains"]["logs"] = {"logger_names": host_loggers}
        domains = sorted({d for site in ordered for d in site.domains})
        if settings.domains_tls == "internal":
            issuer: dict[str, Any] = {"module": "internal"}
            apps["pki"] = {"certificate_authorities": {"local": {"install_trust": False}}}
        else:
            issuer = {"module": "acme"}
            if settings.acme_email:
                issuer["email"] = settings.acme_email
        apps["tls"] = {"automation": {"policies": [{"subjects": domains, "issuers": [issuer]}]}}
    return {
        "admin": admin_config(settings),
        "storage": {"module": "file_system", "root": str(settings.storage)},
        "logging": {"logs": logs},
        "apps": apps,
    }


def bootstrap_config(settings: EdgeSettings) -> dict[str, Any]:
    """What Caddy starts with: its admin socket and its own log, no site yet."""
    return {
        "admin": admin_config(settings),
        "storage": {"module": "file_system", "root": str(settings.storage)},
        "logging": {
            "logs": {
                "default": {
                    "writer": _writer(settings, settings.log_file),
                    "encoder": {"format": "json"},
                }
            }
        },
    }
