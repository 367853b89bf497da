"""``edge_config`` is pure and names no site: the same settings give the same JSON whatever
is served; the route files (``RouteFiles``) say what each port and domain serves."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reconciler.core.kinds import ServeMode
from reconciler.core.spec import ProjectId
from reconciler.edge.config import (
    FANOUT,
    PREVIEW_PATTERN,
    EdgeSettings,
    Site,
    bootstrap_config,
    edge_config,
    listen_spans,
)
from reconciler.edge.routes import RouteFiles

SETTINGS = EdgeSettings(
    admin_socket=Path("/d/edge/admin.sock"),
    storage=Path("/d/edge/storage"),
    log_file=Path("/d/edge/caddy.log"),
    access_log=Path("/d/edge/access.log"),
    releases=Path("/d/production"),
    bind_host="127.0.0.1",
    control_port=29999,
    routes=Path("/d/edge/routes"),
    port_range=(3001, 3999),
)
WWW = Site(ProjectId("www"), 3001, ServeMode.STATIC)
API = Site(ProjectId("api"), 3002, ServeMode.DYNAMIC, (20000, 20001))


def servers(config: dict[str, Any]) -> dict[str, Any]:
    return config["apps"]["http"]["servers"]  # type: ignore[no-any-return]


def test_the_admin_socket_the_check_listener_and_one_server_on_the_whole_range() -> None:
    config = edge_config(SETTINGS)
    assert config["admin"] == {
        "listen": "unix//d/edge/admin.sock",
        "origins": ["localhost"],
        "config": {"persist": False},
    }
    assert list(servers(config)) == ["control", "sites"]
    control = servers(config)["control"]
    assert control["listen"] == ["127.0.0.1:29999"]
    assert control["routes"][0]["match"] == [{"path_regexp": {"pattern": PREVIEW_PATTERN}}]
    assert control["routes"][0]["handle"][-1] == {"handler": "file_server", "root": "/d/production"}
    assert control["routes"][0]["handle"][0]["handler"] == "subroute"  # its dotfiles hidden
    sites = servers(config)["sites"]
    assert sites["listen"] == ["127.0.0.1:3001-3999"]
    assert sites["automatic_https"] == {"disable": True}
    assert "tls" not in config["apps"]
    assert json.dumps(config) == json.dumps(edge_config(SETTINGS)), "a pure function"


def test_requests_are_routed_by_their_port_through_the_route_files() -> None:
    routes = servers(edge_config(SETTINGS))["sites"]["routes"]
    port = "{http.request.local.port}"
    hidden, static, up, svc, missing, nothing = routes
    (dotted,) = hidden["match"]  # a static site's dotfiles: 404, but for /.well-known/
    assert dotted["path_regexp"] == {"pattern": r"/\."}
    assert dotted["not"] == [{"path": ["/.well-known/*"]}]
    assert dotted["file"]["try_files"] == [f"{port}/dist/"]
    assert hidden["handle"][-1]["status_code"] == 404 and hidden["terminal"]
    shown = EdgeSettings(**{**SETTINGS.__dict__, "dotfiles": True})
    assert len(servers(edge_config(shown))["sites"]["routes"]) == len(routes) - 1
    assert "match" not in static, "a static site's files are served with no matcher"
    assert static["handle"] == [
        {"handler": "log_append", "key": "port", "value": port},
        {"handler": "file_server", "root": f"/d/edge/routes/ports/{port}/dist", "pass_thru": True},
    ]
    tries = [r["match"][0]["file"]["try_files"] for r in (up, svc, missing)]
    assert tries == [[f"{port}/up/*@*"], [f"{port}/svc/@*"], [f"{port}/static"]]
    assert all(r["match"][0]["file"]["root"] == "/d/edge/routes/ports" for r in (up, svc))
    assert up["handle"][0]["destinations"] == ["{slot}", "{upstream}"]
    assert up["handle"][-1] == {"handler": "reverse_proxy", "upstreams": [{"dial": "{upstream}"}]}
    assert up["handle"][-2]["response"]["set"] == {"Reconciler-Slot": ["{slot}"]}
    proxy = svc["handle"][-1]
    assert proxy["upstreams"] == [{"dial": f"{{task{i}}}"} for i in range(FANOUT)]
    assert proxy["load_balancing"]["selection_policy"] == {"policy": "round_robin"}
    assert missing["handle"][0]["status_code"] == 404, "a file a static site does not have"
    assert nothing["handle"][0]["status_code"] == 503


def test_ports_held_by_other_processes_are_left_out_of_the_listeners() -> None:
    assert listen_spans(SETTINGS, frozenset({3001, 3500, 3501, 3999})) == [
        "127.0.0.1:3002-3499",
        "127.0.0.1:3502-3998",
    ]
    v6 = EdgeSettings(**{**SETTINGS.__dict__, "bind_host": "::", "port_range": (3001, 3003)})
    assert listen_spans(v6, frozenset({3002})) == ["[::]:3001", "[::]:3003"]
    config = edge_config(SETTINGS, held=frozenset({3001}))
    assert servers(config)["sites"]["listen"] == ["127.0.0.1:3002-3999"]


def test_domains_route_by_a_validated_host_with_certificates_on_demand() -> None:
    settings = EdgeSettings(**{**SETTINGS.__dict__, "domains_https_port": 8443,
                               "domains_http_port": 8080, "domains_tls": "internal"})  # fmt: skip
    config = edge_config(settings, domains=True)
    http = config["apps"]["http"]
    assert (http["http_port"], http["https_port"]) == (8080, 8443)
    domains = http["servers"]["domains"]
    assert domains["listen"] == [":8443"]
    (valid,) = domains["routes"][0]["match"]
    assert set(valid["vars_regexp"]) == {"{http.request.host}"}
    inner = domains["routes"][0]["handle"][0]["routes"]
    assert inner[0]["handle"][-1]["status_code"] == 404, "dotfiles, as by port"
    assert inner[1]["handle"] == [
        {"handler": "file_server", "root": "/d/edge/routes/hosts/{http.request.host}/dist",
         "pass_thru": True}
    ]  # fmt: skip
    assert http["servers"]["redirect"]["listen"] == [":8080"]
    automation = config["apps"]["tls"]["automation"]
    assert automation["policies"] == [{"issuers": [{"module": "internal"}], "on_demand": True}]
    assert automation["on_demand"]["permission"] == {
        "module": "http",
        "endpoint": "http://127.0.0.1:29999/ask",
    }
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False
    acme = EdgeSettings(**{**SETTINGS.__dict__, "acme_email": "ops@example.com"})
    policy = edge_config(acme, domains=True)["apps"]["tls"]["automation"]["policies"][0]
    assert policy["issuers"] == [{"module": "acme", "email": "ops@example.com"}]


def test_bootstrap_is_the_admin_socket_and_the_log_only() -> None:
    config = bootstrap_config(SETTINGS)
    assert set(config) == {"admin", "storage", "logging"}
    assert config["admin"]["listen"] == "unix//d/edge/admin.sock"


def test_access_logs_can_be_turned_off() -> None:
    settings = EdgeSettings(**{**SETTINGS.__dict__, "access_logs": False})
    config = edge_config(settings, domains=True)
    assert "logs" not in servers(config)["sites"]
    assert "logs" not in servers(config)["domains"]
    assert set(config["logging"]["logs"]) == {"default"}
    handlers = [h["handler"] for r in servers(config)["sites"]["routes"] for h in r["handle"]]
    assert "log_append" not in handlers


def test_route_files_say_what_each_port_and_domain_serves(tmp_path: Path) -> None:
    routes, releases = tmp_path / "routes", tmp_path / "production"
    files = RouteFiles(routes, releases)
    site = Site(ProjectId("www"), 3001, ServeMode.STATIC, domains=("www.example.com",))
    svc = Site(ProjectId("svc"), 3003, ServeMode.SERVICE, fanout=FANOUT)
    assert files.apply({WWW.project_id: site, API.project_id: API, svc.project_id: svc}) == 5
    assert os.readlink(routes / "ports/3001/dist") == str(releases / "www/current/dist")
    assert (routes / "ports/3001/static").is_file()
    assert os.readlink(routes / "ports/3002/up") == str(releases / "api/slot")
    assert os.readlink(routes / "ports/3003/svc") == str(releases / "svc/tasks")
    assert os.readlink(routes / "hosts/www.example.com") == "../ports/3001"
    assert sorted(p.name for p in (releases / "api/slots").glob("*/*@*")) == [
        "a@127.0.0.1:20000",
        "b@127.0.0.1:20001",
    ]
    assert files.apply({WWW.project_id: site, API.project_id: API, svc.project_id: svc}) == 0
    everything = {WWW.project_id: site, API.project_id: API, svc.project_id: svc}
    del everything[svc.project_id]
    assert files.apply(everything, changed={svc.project_id}) == 1, "only what changed"
    assert not (routes / "ports/3003").exists() and (routes / "ports/3002/up").is_symlink()
    moved = Site(ProjectId("www"), 3001, ServeMode.STATIC, domains=("example.org",))
    assert files.apply({WWW.project_id: moved}) == 3, "a domain moved, a site gone"
    assert sorted(os.listdir(routes / "ports/3001")) == ["dist", "static"]
    assert sorted(os.listdir(routes / "ports")) == ["3001"]
    assert os.listdir(routes / "hosts") == ["example.org"]
    (routes / "ports/3001/stray").mkdir()
    (routes / "ports/9").symlink_to("/")
    (routes / "ports/3005").mkdir()
    again = RouteFiles(routes, releases)  # a restart: what is on disk is read first
    assert again.apply({WWW.project_id: moved}) == 0
    assert sorted(os.listdir(routes / "ports")) == ["3001"]
    assert sorted(os.listdir(routes / "ports/3001")) == ["dist", "static"]


def test_the_periodic_check_mends_a_slice_of_sites_and_clears_strays_once_a_round(
    tmp_path: Path,
) -> None:
    routes, releases = tmp_path / "routes", tmp_path / "production"
    files = RouteFiles(routes, releases)
    sites = {
        ProjectId(f"s{i}"): Site(ProjectId(f"s{i}"), 3001 + i, ServeMode.STATIC) for i in range(4)
    }
    assert files.apply(sites) == 8
    for i in range(4):  # every site's link pointed elsewhere by hand
        (routes / f"ports/{3001 + i}/dist").unlink()
        (routes / f"ports/{3001 + i}/dist").symlink_to("/")
    (routes / "ports/3001/junk").touch()
    (routes / "ports/3999").mkdir()
    (routes / "hosts/nobody.example").symlink_to("../ports/3999")
    assert files.check(sites, 2) == 3, "the first slice: s0 (and its junk) and s1"
    assert os.readlink(routes / "ports/3001/dist") == str(releases / "s0/current/dist")
    assert os.readlink(routes / "ports/3003/dist") == "/", "not in this slice"
    assert not (routes / "ports/3001/junk").exists()
    assert (routes / "ports/3999").exists(), "stray dirs wait for the end of the round"
    assert files.check(sites, 2) == 2 + 2, "s2 and s3; the round ends: strays go"
    assert os.readlink(routes / "ports/3004/dist") == str(releases / "s3/current/dist")
    assert sorted(os.listdir(routes / "ports")) == ["3001", "3002", "3003", "3004"]
    assert os.listdir(routes / "hosts") == []
    assert files.check(sites, 4) == 0, "nothing left to mend"
