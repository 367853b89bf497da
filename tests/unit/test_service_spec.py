"""The swarm service a release becomes: a pure function of the release, its spec and the
daemon's settings."""

from __future__ import annotations

from pathlib import Path

from reconciler.core.logfiles import LogLimits
from reconciler.core.spec import Limits, ProjectId, ProjectSpec
from reconciler.runtimes.docker.services import service_spec
from reconciler.stores.releases import Release


def test_a_release_becomes_a_start_first_service_that_rolls_back() -> None:
    release = Release(ProjectId("api"), "1a2b3c4d", "f" * 64, Path("/x"), "2026-01-01T00:00:00Z")
    spec = ProjectSpec.model_validate(
        {"source": "x", "runtime": "swarm", "deploy": {"replicas": 3},
         "health": {"path": "/up", "interval": 2, "timeout": 30},
         "limits": {"memory": "128M"}, "start": {"writable": ["/data"]}}
    )  # fmt: skip
    kwargs = service_spec(
        release, spec, image="reg/api:1a2b3c4d", cport=8080, config="c0ffee00",
        stop_grace=4.0, limits=Limits(cpu=0.5), log_limits=LogLimits(1000, 2),
    )  # fmt: skip
    assert kwargs["name"] == "doce_prod_api"
    assert kwargs["labels"]["reconciler.replicas"] == "3"
    assert kwargs["mode"] == {"replicated": {"Replicas": 3}}
    assert kwargs["update_config"]["Order"] == "start-first"
    assert kwargs["update_config"]["FailureAction"] == "rollback"
    task = kwargs["task_template"]
    container = task["ContainerSpec"]
    assert container["Image"] == "reg/api:1a2b3c4d" and container["ReadOnly"] is True
    assert container["Env"] == ["PORT=8080"]
    assert container["Healthcheck"]["Test"][-1] == "http://127.0.0.1:8080/up"
    assert [m["Target"] for m in container["Mounts"]] == ["/tmp", "/data"]
    assert task["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 128 << 20}
    assert task["LogDriver"]["Options"] == {"max-size": "1000", "max-file": "2"}


def test_an_edge_on_another_node_serves_what_the_labels_say_and_nothing_hostile(
    tmp_path: Path,
) -> None:
    """The site's port and domains travel as the service's labels; an edge node serves a
    service only at a port of its range, with an id and domains that pass the checks."""
    from reconciler.core.config import Config, PortRange
    from reconciler.daemon.edgenode import EdgeNode

    release = Release(ProjectId("api"), "1a2b3c4d", "f" * 64, Path("/x"), "2026-01-01T00:00:00Z")
    spec = ProjectSpec.model_validate(
        {"source": "x", "runtime": "swarm", "domains": ["api.example.com"]}
    )
    kwargs = service_spec(
        release, spec, image="i", cport=8080, config="c", stop_grace=1.0, limits=Limits(),
        log_limits=LogLimits(1000, 2), port=3005,
    )  # fmt: skip
    labels = kwargs["labels"]
    assert (labels["reconciler.port"], labels["reconciler.domains"]) == ("3005", "api.example.com")
    node = EdgeNode.__new__(EdgeNode)
    node.config = Config(desired_dir=tmp_path, data_dir=tmp_path, port_range=PortRange(3001, 3099))

    def site(**extra: str) -> object:
        return node._site({"Spec": {"Labels": {**labels, **extra}}})

    found = site()
    assert found is not None
    assert (found.project_id, found.port, found.domains) == ("api", 3005, ("api.example.com",))  # type: ignore[attr-defined]
    for hostile in ({"reconciler.project": "../etc"}, {"reconciler.port": "80"},
                    {"reconciler.port": "x"}, {"reconciler.domains": "evil.com/../x"}):  # fmt: skip
        assert site(**hostile) is None, hostile
