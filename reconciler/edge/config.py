"""The edge's whole configuration as a pure function of its own settings:
``edge_config(settings, held=..., domains=...) -> dict``.

No site is named in it. Adding, removing, stopping, switching a site or moving a domain is a
change of files (``routes``), never a configuration load: every Caddy load closes listeners
and idle keep-alive connections on every site. A load happens only when the edge's settings
change (its port range, bind address, TLS), when a port of the range that another process
held is free again (or the reverse), and the first time a site asks for a domain.

One server listens on the whole public port range (less the ports other processes hold).
A request is routed by the port it arrived on, through ``<routes>/ports/<port>/``:

- ``dist`` -> ``<releases>/<id>/current/dist``: served by ``file_server`` before anything is
  matched (it passes on a file it does not find); ``static`` (a file) makes that a 404;
- ``up`` -> ``<releases>/<id>/slot`` (``slots/a|b``): the slot's dir holds one file named
  ``<slot>@<address>`` (``a@127.0.0.1:20001``), which a ``map`` turns into the upstream the
  request is proxied to (and the ``Reconciler-Slot`` header); the ``slot`` flip is the switch;
- ``svc`` -> ``<releases>/<id>/tasks``: a swarm service's tasks, one file named
  ``@<addr>,<addr>,...`` (``FANOUT`` addresses, in turn), proxied to round robin;
- ``wake`` (a file, beside ``up`` or ``svc``): the site sleeps. Each request first asks the
  daemon's waker (a unix socket) ``GET /wake/port/<port>`` (or ``/wake/host/<host>``), which
  answers once the site runs again; on a 2xx nothing is written and the request goes on to
  ``up`` or ``svc``, now served; anything else (503 with ``Retry-After`` when the wake fails or
  takes too long) is the answer. Awake sites have no such file and pay nothing;
- nothing: ``503 no site is served here now``.

Sites with domains are routed the same way by a validated Host through
``<routes>/hosts/<domain> -> ../ports/<port>`` on one HTTPS listener, with certificates on
demand: Caddy asks the control server, which answers from the same links (only names a
desired file claims get one). Every access log line names the port it came to (``"port"``)
or its host (a domain).
The control server (127.0.0.1 only) also serves ``/<id>/preview/dist/...`` for the check a
static release passes before it goes live. Values reaching a path were validated where
they entered (project ids, hostnames, ports); Host is validated before it becomes a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reconciler.core.kinds import ServeMode
from reconciler.core.spec import PROJECT_ID, ProjectId, ProjectSpec
from reconciler.stores.previews import COOKIE, PreviewAddress

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
    routes: Path = Path("/nonexistent")  # the files requests are routed through (see above)
    port_range: tuple[int, int] = (3001, 3999)  # the public ports the one server listens on
    domains_http_port: int = 80
    domains_https_port: int = 443
    domains_tls: Literal["acme", "internal"] = "acme"
    acme_email: str | None = None
    log_roll_mb: int = 10
    log_roll_keep: int = 5
    access_logs: bool = True  # one JSON line per request
    dotfiles: bool = False  # a static site's dotfiles served (off: 404, but .well-known)
    previews: PreviewAddress | None = None  # kept versions, by Host (see ``_previews``)
    waker: Path | None = None  # the daemon's unix socket that wakes sleeping sites


@dataclass(frozen=True)
class Site:
    """What the edge serves for one project."""

    project_id: ProjectId
    port: int
    mode: ServeMode
    slots: tuple[int, int] | None = None  # dynamic: the internal ports of slots a and b
    domains: tuple[str, ...] = ()
    fanout: int = 0  # service: the upstream entries its tasks are spread over
    asleep: bool = False  # its requests wake it first (``wake``)


def site_of(
    project_id: ProjectId,
    port: int,
    mode: ServeMode,
    spec: ProjectSpec,
    slots: tuple[int, int] | None = None,
    *,
    asleep: bool = False,
) -> Site:
    """The site a project's spec makes at ``port`` (the one place a ``Site`` is made)."""
    return Site(
        project_id,
        port,
        mode,
        slots if mode == ServeMode.DYNAMIC else None,
        tuple(spec.domains),
        FANOUT if mode == ServeMode.SERVICE else 0,
        asleep and mode in (ServeMode.DYNAMIC, ServeMode.SERVICE),
    )


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


WAKER_TRY = "15s"  # how long a request for a sleeping site waits for the waker to listen
SERVICE_DIAL_TIMEOUT = "1s"  # a task's node that does not answer a connection at all
SERVICE_TRY_DURATION = "5s"  # a task that went away: the request is tried on the others
FANOUT = 8  # a service's upstream entries: its tasks in turn (a file name holds 8 addresses)
HOST_RE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
PORT = "{http.request.local.port}"
HOST = "{http.request.host}"


def _file(root: Path, pattern: str) -> dict[str, Any]:
    return {"file": {"root": str(root), "try_files": [pattern]}}


def _named(pattern: str, outputs: list[str], destinations: list[str]) -> dict[str, Any]:
    """Placeholders taken from the path of the route file that matched."""
    return {
        "handler": "map",
        "source": "{http.matchers.file.relative}",
        "destinations": [f"{{{name}}}" for name in destinations],
        "mappings": [{"input_regexp": pattern, "outputs": outputs}],
    }


def _wake(root: Path, key: str, what: str, waker: Path | None) -> list[dict[str, Any]]:
    # ``what``: port, host, or preview (``key``: ``<project>/<version>``)
    """The waker's subrequest, for a site whose ``wake`` file says it sleeps (forward-auth
    style: the rewrite to GET sends no body; a 2xx writes nothing, so the request goes on)."""
    if waker is None:
        return []
    ask = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"unix/{waker}"}],
        "rewrite": {"method": "GET", "uri": f"/wake/{what}/{key}"},
        # a daemon restarting (its socket gone a moment): the request waits, then goes on
        "load_balancing": {"try_duration": WAKER_TRY, "try_interval": "100ms"},
        "handle_response": [
            {"match": {"status_code": [2]}, "routes": [{"handle": [{"handler": "vars"}]}]}
        ],
    }
    return [{"match": [_file(root, f"{key}/wake")], "handle": [ask]}]


def _asleep_errors(root: Path, key: str) -> dict[str, Any]:
    """A sleeping site whose waker does not answer (the daemon is down past the retry window):
    a clear 503 to try again, not a bare 502. Other errors keep Caddy's own answer. A Host is
    validated before it becomes a path, as in the routes."""
    valid = {"vars_regexp": {HOST: {"pattern": HOST_RE}}} if key == HOST else {}
    return {
        "routes": [
            {
                "match": [{**valid, **_file(root, f"{key}/wake")}],
                "handle": [
                    {
                        "handler": "static_response",
                        "status_code": 503,
                        "headers": {"Retry-After": ["5"], "Cache-Control": ["no-store"]},
                        "body": "this site is asleep and cannot be woken right now (its daemon "
                        "is not answering); try again shortly\n",
                    }
                ],
            }
        ]
    }


def _dotfiles(root: Path, key: str, logged: list[dict[str, Any]]) -> dict[str, Any]:
    """A static site's dotfiles (.env, .git/config) are not served; /.well-known/ is."""
    return {
        "match": [
            {
                "path_regexp": {"pattern": r"/\."},
                "not": [{"path": ["/.well-known/*"]}],
                **_file(root, f"{key}/dist/"),
            }
        ],
        "handle": [
            *logged,
            {"handler": "static_response", "status_code": 404, "body": "not found"},
        ],
        "terminal": True,
    }


def _site_routes(
    root: Path,
    key: str,
    logged: list[dict[str, Any]],
    waker: Path | None = None,
    dotfiles: bool = False,
) -> list[dict[str, Any]]:
    """Serve the site whose route files are under ``root/<key>/`` (``key``: the port a request
    arrived on, or its validated Host). A static site costs what a plain file server does
    (measured: the same requests per second); an app's upstream is the name of the one file in
    its slot's dir; a sleeping one is woken first."""
    proxy_service = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"{{task{i}}}"} for i in range(FANOUT)],
        "load_balancing": {
            "selection_policy": {"policy": "round_robin"},
            "try_duration": SERVICE_TRY_DURATION,
            "try_interval": "10ms",
        },
        # a task on a node that went away: its packets are dropped, not refused; the request
        # is tried on another task after this, not after the default 3 s
        "transport": {"protocol": "http", "dial_timeout": SERVICE_DIAL_TIMEOUT},
    }
    tasks = ",".join(["([^,]+)"] * FANOUT)
    hidden = [] if dotfiles else [_dotfiles(root, key, logged)]
    return [
        *hidden,
        {  # a static site: its files, straight away (a file it does not have goes on below)
            "handle": [
                *logged,
                {"handler": "file_server", "root": f"{root}/{key}/dist", "pass_thru": True},
            ]
        },
        *_wake(root, key, "port" if key == PORT else "host", waker),
        {
            "match": [_file(root, f"{key}/up/*@*")],
            "handle": [
                _named(r"^/[^/]+/up/([ab])@(.+)$", ["${1}", "${2}"], ["slot", "upstream"]),
                {"handler": "headers", "response": {"set": {SLOT_HEADER: ["{slot}"]}}},
                {"handler": "reverse_proxy", "upstreams": [{"dial": "{upstream}"}]},
            ],
            "terminal": True,
        },
        {
            "match": [_file(root, f"{key}/svc/@*")],
            "handle": [
                _named(
                    f"^/[^/]+/svc/@{tasks}$",
                    [f"${{{i}}}" for i in range(1, FANOUT + 1)],
                    [f"task{i}" for i in range(FANOUT)],
                ),
                proxy_service,
            ],
            "terminal": True,
        },
        {
            "match": [_file(root, f"{key}/static")],
            "handle": [{"handler": "static_response", "status_code": 404}],
            "terminal": True,
        },
        {
            "handle": [
                {
                    "handler": "static_response",
                    "status_code": 503,
                    "body": "no site is served here now\n",
                    "close": True,
                }
            ]
        },
    ]


def _listen(host: str, port: int, last: int | None = None) -> str:
    ports = f"{port}-{last}" if last is not None and last != port else f"{port}"
    return f"[{host}]:{ports}" if ":" in host else f"{host}:{ports}"


def listen_spans(settings: EdgeSettings, held: frozenset[int]) -> list[str]:
    """The range's listen addresses, around the ports other processes hold (one port that
    cannot be bound would fail the whole load)."""
    first, last = settings.port_range
    spans: list[str] = []
    start: int | None = None
    for port in range(first, last + 2):
        free = port <= last and port not in held
        if free and start is None:
            start = port
        elif not free and start is not None:
            spans.append(_listen(settings.bind_host, start, port - 1))
            start = None
    return spans


def _hidden(dotfiles: bool, base: str = "/") -> list[dict[str, Any]]:
    """Routes that hide a release's dotfiles below ``base`` as its site does (but
    /.well-known/): the check route's and the previews'."""
    if dotfiles:
        return []
    return [
        {
            "match": [
                {
                    "path_regexp": {"pattern": rf"{base}(.*/)?\."},
                    "not": [{"path_regexp": {"pattern": rf"{base}\.well-known/"}}],
                }
            ],
            "handle": [{"handler": "static_response", "status_code": 404, "body": "not found"}],
            "terminal": True,
        }
    ]


def _hidden_in_check(dotfiles: bool) -> list[dict[str, Any]]:
    routes = _hidden(dotfiles, "/preview/dist/")
    return [{"handler": "subroute", "routes": routes}] if routes else []


def _control(settings: EdgeSettings) -> dict[str, Any]:
    hosts = settings.routes / "hosts"
    return {
        "listen": [_listen("127.0.0.1", settings.control_port)],
        "automatic_https": {"disable": True},
        "routes": [
            {
                "match": [{"path_regexp": {"pattern": PREVIEW_PATTERN}}],
                "handle": [
                    *_hidden_in_check(settings.dotfiles),
                    {"handler": "file_server", "root": str(settings.releases)},
                ],
                "terminal": True,
            },
            {  # Caddy asks before it gets a certificate: only for names a site claims
                "match": [
                    {
                        "path": ["/ask"],
                        "vars_regexp": {"{http.request.uri.query.domain}": {"pattern": HOST_RE}},
                    },
                ],
                "handle": [
                    {
                        "handler": "subroute",
                        "routes": [
                            {
                                "match": [_file(hosts, "{http.request.uri.query.domain}/")],
                                "handle": [{"handler": "static_response", "status_code": 200}],
                                "terminal": True,
                            },
                        ],
                    }
                ],
            },
            {"handle": [{"handler": "static_response", "status_code": 404}]},
        ],
    }


def _previews(settings: EdgeSettings, previews: PreviewAddress) -> dict[str, Any]:
    """Kept versions by Host, ``<version>.<project>.<domain>``: the static ones a route file
    (``previews/<project>/<version>`` -> its dist) names; a version that runs as an app has
    none (its files are its code, never served). With a token: ``?token=`` once, then the
    cookie the answer set."""
    root = settings.routes / "previews"
    domain = re.escape(previews.domain)
    host = {"name": "pv", "pattern": rf"^([0-9a-f]{{8}})\.({PROJECT_ID})\.{domain}$"}
    key = "{http.regexp.pv.2}/{http.regexp.pv.1}"
    app = [  # a version that runs as an app: woken (a preview instance), then proxied to
        *_wake(root, key, "preview", settings.waker),
        {
            "match": [_file(root, f"{key}/@*")],
            "handle": [
                _named(r"^/[^/]+/[^/]+/@(.+)$", ["${1}"], ["upstream"]),
                {"handler": "reverse_proxy", "upstreams": [{"dial": "{upstream}"}]},
            ],
            "terminal": True,
        },
        {"handle": [{"handler": "static_response", "status_code": 503,
                     "headers": {"Retry-After": ["5"]}, "body": "this preview is asleep\n"}]},
    ]  # fmt: skip
    serve = [
        {
            "match": [_file(root, f"{key}/app")],
            "handle": [{"handler": "subroute", "routes": app}],
            "terminal": True,
        },
        *_hidden(settings.dotfiles, "^/"),
        {
            "match": [_file(root, f"{key}/")],
            "handle": [{"handler": "file_server", "root": f"{root}/{key}"}],
            "terminal": True,
        },
        {"handle": [{"handler": "static_response", "status_code": 404,
                     "body": "no preview of this version\n"}]},
    ]  # fmt: skip
    by_host = {"vars_regexp": {HOST: host}}
    routes: list[dict[str, Any]]
    if previews.token is None:
        routes = [{"match": [by_host], "handle": [{"handler": "subroute", "routes": serve}],
                   "terminal": True}]  # fmt: skip
    else:
        token = re.escape(previews.token)
        cookie = {"name": "pc", "pattern": rf"(^|;\s*){COOKIE}={token}(;|$)"}
        remember = {"handler": "headers", "response": {"set": {"Set-Cookie": [
            f"{COOKIE}={previews.token}; Path=/; HttpOnly; SameSite=Lax"]}}}  # fmt: skip
        routes = [
            {"match": [{**by_host, "query": {"token": [previews.token]}}],
             "handle": [remember, {"handler": "subroute", "routes": serve}], "terminal": True},
            {"match": [{**by_host, "header_regexp": {"Cookie": cookie}}],
             "handle": [{"handler": "subroute", "routes": serve}], "terminal": True},
            {"match": [by_host], "handle": [{"handler": "static_response", "status_code": 401,
             "body": "this preview needs its link's token\n"}], "terminal": True},
        ]  # fmt: skip
    routes.append({"handle": [{"handler": "static_response", "status_code": 404}]})
    server: dict[str, Any] = {
        "listen": [_listen(settings.bind_host, previews.port)],
        "automatic_https": {"disable": True},
        "routes": routes,
    }
    if settings.access_logs:  # an app version's preview sleeps when its host is not asked
        server["logs"] = {"default_logger_name": "previews"}
    return server


def _domains(settings: EdgeSettings, servers: dict[str, Any]) -> dict[str, Any]:
    """The HTTPS listener routing by a validated Host, the HTTP one redirecting to it, and
    certificates on demand for the names the control server says a site claims."""
    hosts = settings.routes / "hosts"
    valid = {"vars_regexp": {HOST: {"pattern": HOST_RE}}}
    servers["domains"] = {
        "listen": [f":{settings.domains_https_port}"],
        "routes": [
            {
                "match": [valid],
                "handle": [
                    {
                        "handler": "subroute",
                        "routes": _site_routes(hosts, HOST, [], settings.waker, settings.dotfiles),
                    }
                ],
                "terminal": True,
            },
            {"handle": [{"handler": "static_response", "status_code": 404}]},
        ],
        "errors": _asleep_errors(hosts, HOST),
        "tls_connection_policies": [{}],
    }
    if settings.access_logs:
        servers["domains"]["logs"] = {"default_logger_name": "sites"}
    servers["redirect"] = {
        "listen": [f":{settings.domains_http_port}"],
        "automatic_https": {"disable": True},
        "routes": [
            {
                "match": [valid, _file(hosts, f"{HOST}/")],
                "handle": [
                    {
                        "handler": "static_response",
                        "status_code": 308,
                        "headers": {"Location": [f"https://{HOST}{{http.request.uri}}"]},
                    }
                ],
                "terminal": True,
            },
            {"handle": [{"handler": "static_response", "status_code": 404}]},
        ],
    }
    if settings.domains_tls == "internal":
        issuer: dict[str, Any] = {"module": "internal"}
    else:
        issuer = {"module": "acme"}
        if settings.acme_email:
            issuer["email"] = settings.acme_email
    ask = f"http://127.0.0.1:{settings.control_port}/ask"
    return {
        "automation": {
            "policies": [{"issuers": [issuer], "on_demand": True}],
            "on_demand": {"permission": {"module": "http", "endpoint": ask}},
        }
    }


def edge_config(
    settings: EdgeSettings, *, held: frozenset[int] = frozenset(), domains: bool = False
) -> dict[str, Any]:
    """The configuration: the same for every set of sites. ``held``: ports of the range
    that other processes hold; ``domains``: serve domains (once a site asks for one)."""
    logs: dict[str, Any] = {
        "default": {
            "writer": _writer(settings, settings.log_file),
            "encoder": {"format": "json"},
            "exclude": ["http.log.access", "admin.api"],
        }
    }
    if settings.access_logs:
        logs["access"] = {
            "writer": _writer(settings, settings.access_log),
            "encoder": {"format": "json"},
            "include": ["http.log.access"],
        }
    ports = settings.routes / "ports"
    servers: dict[str, Any] = {"control": _control(settings)}
    if settings.previews is not None:
        servers["previews"] = _previews(settings, settings.previews)
    # each line names the port it came to (a domain's names its host already)
    logged = [{"handler": "log_append", "key": "port", "value": PORT}]
    logged = logged if settings.access_logs else []
    spans = listen_spans(settings, held)
    if spans:
        servers["sites"] = {
            "listen": spans,
            "automatic_https": {"disable": True},
            "routes": _site_routes(ports, PORT, logged, settings.waker, settings.dotfiles),
            "errors": _asleep_errors(ports, PORT),
        }
        if settings.access_logs:
            servers["sites"]["logs"] = {"default_logger_name": "sites"}
    # metrics: request counts and latencies by host (every host: the one server serves them
    # all) at the admin endpoint's /metrics, which the API's /metrics passes on by site
    metrics = {"per_host": True, "observe_catchall_hosts": True}
    apps: dict[str, Any] = {"http": {"servers": servers, "metrics": metrics}}
    if domains:
        apps["http"]["http_port"] = settings.domains_http_port
        apps["http"]["https_port"] = settings.domains_https_port
        apps["tls"] = _domains(settings, servers)
        if settings.domains_tls == "internal":
            apps["pki"] = {"certificate_authorities": {"local": {"install_trust": False}}}
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
