"""``edge_config`` is pure: table cases for what each kind of site becomes in Caddy's JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.kinds import ServeMode
from reconciler.core.spec import ProjectId
from reconciler.edge.config import (
    PREVIEW_PATTERN,
    EdgeSettings,
    Site,
    bootstrap_config,
    edge_config,
    service_fanout,
)

SETTINGS = EdgeSettings(
    admin_socket=Path("/d/edge/admin.sock"),
    storage=Path("/d/edge/storage"),
    log_file=Path("/d/edge/caddy.log"),
    access_log=Path("/d/edge/access.log"),
    releases=Path("/d/production"),
    bind_host="127.0.0.1",
    control_port=29999,
)
WWW = Site(ProjectId("www"), 3001, ServeMode.STATIC)
API = Site(ProjectId("api"), 3002, ServeMode.DYNAMIC, (20000, 20001))


def servers(config: dict[str, Any]) -> dict[str, Any]:
    return config["apps"]["http"]["servers"]  # type: ignore[no-any-return]


def test_no_sites_still_has_the_admin_socket_and_the_check_listener() -> None:
    config = edge_config(SETTINGS, [])
    assert config["admin"] == {
        "listen": "unix//d/edge/admin.sock",
        "origins": ["localhost"],
        "config": {"persist": False},
    }
    assert list(servers(config)) == ["control"]
    control = servers(config)["control"]
    assert control["listen"] == ["127.0.0.1:29999"]
    assert control["routes"][0]["match"] == [{"path_regexp": {"pattern": PREVIEW_PATTERN}}]
    assert control["routes"][0]["handle"] == [{"handler": "file_server", "root": "/d/production"}]
    assert "tls" not in config["apps"]


def test_static_site_serves_current_dist_on_its_port_naming_it_in_the_access_log() -> None:
    config = edge_config(SETTINGS, [WWW, API])
    server = servers(config)["site-www"]
    assert server["listen"] == ["127.0.0.1:3001"]
    assert server["automatic_https"] == {"disable": True}
    assert server["routes"] == [
        {"handle": [{"handler": "file_server", "root": "/d/production/www/current/dist"}]}
    ]
    assert server["logs"] == {"default_logger_name": "site-www"}
    logs = config["logging"]["logs"]
    assert set(logs) == {"default", "access"}, "one access writer for every site"
    assert logs["access"]["writer"]["filename"] == "/d/edge/access.log"
    assert logs["access"]["include"] == ["http.log.access"]
    assert logs["default"]["exclude"] == ["http.log.access", "admin.api"]


def test_dynamic_site_routes_by_slot_marker_to_fixed_ports() -> None:
    routes = servers(edge_config(SETTINGS, [API]))["site-api"]["routes"]
    assert routes[0]["match"] == [{"file": {"root": "/d/production/api", "try_files": ["slot/a"]}}]
    assert routes[0]["handle"][1] == {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": "127.0.0.1:20000"}],
    }
    assert routes[0]["handle"][0]["response"]["set"] == {"Reconciler-Slot": ["a"]}
    assert "match" not in routes[1]
    assert routes[1]["handle"][1]["upstreams"] == [{"dial": "127.0.0.1:20001"}]


def test_a_dynamic_site_without_slots_is_a_bug() -> None:
    with pytest.raises(ValueError, match="no slot ports"):
        edge_config(SETTINGS, [Site(ProjectId("api"), 3002, ServeMode.DYNAMIC)])


@pytest.mark.parametrize(
    ("changed", "same"),
    [
        pytest.param([WWW, API], [API, WWW], id="order-does-not-matter"),
    ],
)
def test_the_same_sites_give_the_same_config(changed: list[Site], same: list[Site]) -> None:
    assert json.dumps(edge_config(SETTINGS, changed)) == json.dumps(edge_config(SETTINGS, same))


def test_domains_route_by_host_with_certificates() -> None:
    site = Site(
        ProjectId("www"), 3001, ServeMode.STATIC, domains=("example.com", "www.example.com")
    )
    settings = EdgeSettings(**{**SETTINGS.__dict__, "domains_https_port": 8443,
                               "domains_http_port": 8080, "domains_tls": "internal"})  # fmt: skip
    config = edge_config(settings, [site])
    http = config["apps"]["http"]
    assert (http["http_port"], http["https_port"]) == (8080, 8443)
    domains = http["servers"]["domains"]
    assert domains["listen"] == [":8443"]
    assert domains["routes"][0]["match"] == [{"host": ["example.com", "www.example.com"]}]
    assert domains["routes"][0]["handle"][0]["routes"] == http["servers"]["site-www"]["routes"]
    assert domains["logs"]["logger_names"] == {
        "example.com": ["site-www"],
        "www.example.com": ["site-www"],
    }
    policy = config["apps"]["tls"]["automation"]["policies"][0]
    assert policy == {
        "subjects": ["example.com", "www.example.com"],
        "issuers": [{"module": "internal"}],
    }
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False


def test_acme_is_the_default_issuer() -> None:
    site = Site(ProjectId("www"), 3001, ServeMode.STATIC, domains=("example.com",))
    settings = EdgeSettings(**{**SETTINGS.__dict__, "acme_email": "ops@example.com"})
    policy = edge_config(settings, [site])["apps"]["tls"]["automation"]["policies"][0]
    assert policy["issuers"] == [{"module": "acme", "email": "ops@example.com"}]


def test_ipv6_bind_hosts_are_bracketed() -> None:
    settings = EdgeSettings(**{**SETTINGS.__dict__, "bind_host": "::"})
    assert servers(edge_config(settings, [WWW]))["site-www"]["listen"] == ["[::]:3001"]


def test_bootstrap_is_the_admin_socket_and_the_log_only() -> None:
    config = bootstrap_config(SETTINGS)
    assert set(config) == {"admin", "storage", "logging"}
    assert config["admin"]["listen"] == "unix//d/edge/admin.sock"


def test_access_logs_can_be_turned_off() -> None:
    settings = EdgeSettings(**{**SETTINGS.__dict__, "access_logs": False})
    site = Site(ProjectId("www"), 3001, ServeMode.STATIC, domains=("example.com",))
    config = edge_config(settings, [site])
    assert "logs" not in servers(config)["site-www"]
    assert "logs" not in servers(config)["domains"]
    assert set(config["logging"]["logs"]) == {"default"}
    assert config["apps"]["tls"]["automation"]["policies"][0]["subjects"] == ["example.com"]


def test_a_service_site_dials_the_addresses_in_its_task_files() -> None:
    """The tasks move without a load: each upstream entry reads its address from a file per
    request; without tasks/0 the site answers 503."""
    site = Site(ProjectId("svc"), 3003, ServeMode.SERVICE, fanout=service_fanout(2))
    routes = servers(edge_config(SETTINGS, [site]))["site-svc"]["routes"]
    assert routes[0]["match"] == [{"file": {"root": "/d/production/svc", "try_files": ["tasks/0"]}}]
    proxy = routes[0]["handle"][0]
    assert proxy["upstreams"] == [
        {"dial": f"{{file./d/production/svc/tasks/{i}}}"} for i in range(4)
    ]
    assert proxy["load_balancing"]["selection_policy"] == {"policy": "round_robin"}
    assert proxy["load_balancing"]["try_duration"] == "5s"
    assert routes[1]["handle"][0]["status_code"] == 503


@pytest.mark.parametrize(("replicas", "fanout"), [(1, 2), (2, 4), (5, 10), (100, 64)])
def test_a_service_has_twice_its_replicas_in_entries(replicas: int, fanout: int) -> None:
    assert service_fanout(replicas) == fanout
