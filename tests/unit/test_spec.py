"""Table-driven tests of desired-state schema v1: each case asserts the message and the line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from reconciler.core.kinds import RuntimeName
from reconciler.core.spec import InvalidProjectId, Limits, ProjectSpec, check_project_id
from reconciler.stores.desired import DesiredFileError, parse

P = Path("desired/site.yaml")

VALID = [
    pytest.param("source: ../site\n", {}, id="minimal-defaults"),
    pytest.param(
        "source: ../site\nruntime: docker\nproduction:\n  state: running\n  version: a1b2c3d4\n"
        "  generation: 7\nbuild:\n  command: npm run build\n  output: out\n  timeout: 30\n"
        "start:\n  command: node server.js\n  port: 8080\nhealth:\n  path: /healthz\n"
        "  timeout: 60\n  interval: 0.5\nkeep: 5\nenv:\n  NODE_ENV: production\n",
        {"runtime": "docker", "keep": 5, "version": "a1b2c3d4", "generation": 7},
        id="every-field",
    ),
    pytest.param("source: x\nproduction:\n  version: latest\n", {"version": "latest"}, id="latest"),
    pytest.param("source: x\nhealth:\n  timeout: 5\n", {}, id="int-for-float"),
    pytest.param("\ufeffsource: x\n", {}, id="utf8-bom"),
    pytest.param("source: x\nstart:\n  command: null\n", {}, id="explicit-null-command"),
]


@pytest.mark.parametrize(("text", "expect"), VALID)
def test_valid(text: str, expect: dict[str, object]) -> None:
    spec = parse(P, text.encode())
    assert spec.source
    for key, value in expect.items():
        obj = spec.production if key in ("version", "generation", "state") else spec
        assert getattr(obj, key) == value


def test_defaults() -> None:
    spec = parse(P, b"source: ../site\n")
    assert spec.runtime is None
    assert spec.production.state == "stopped"
    assert spec.production.version == "latest"
    assert spec.production.generation == 0
    assert spec.build.command is None and spec.build.timeout == 600
    assert spec.build_output("process") == "dist"
    assert spec.build_output("docker") == "/app/dist"
    assert spec.start.command is None and spec.start.port is None
    assert (spec.health.path, spec.health.timeout, spec.health.interval) == ("/", 300, 2)
    assert spec.keep == 2 and spec.env == {}


INVALID = [
    pytest.param("runtime: process\n", 1, "missing required key 'source'", id="missing-source"),
    pytest.param(
        "source: x\nbogus: 1\n", 2, "unknown key 'bogus' in the top level", id="unknown-top"
    ),
    pytest.param(
        "source: x\nproduction:\n  state: running\n  replicas: 2\n",
        4,
        "unknown key 'replicas' in production",
        id="unknown-nested",
    ),
    pytest.param(
        "source: x\nproduction:\n  state: started\n",
        3,
        "production.state: Input should be 'running' or 'stopped'",
        id="bad-state",
    ),
    pytest.param(
        "source: x\nproduction:\n  version: A1B2C3D4\n",
        3,
        "version must be 'latest' or 8 lowercase hex",
        id="uppercase-version",
    ),
    pytest.param(
        "source: x\nproduction:\n  version: a1b2c3d\n", 3, "8 lowercase hex", id="short-version"
    ),
    pytest.param(
        "source: x\nproduction:\n  version: 12345678\n",
        3,
        "version 12345678 was read as a number: a version of digits only must be quoted "
        '(version: "12345678"',
        id="digits-version",
    ),
    pytest.param(
        "source: x\nproduction:\n  generation: -1\n",
        3,
        "production.generation: Input should be greater than or equal to 0",
        id="negative-generation",
    ),
    pytest.param(
        "source: x\nproduction:\n  generation: 18446744073709551616\n",
        3,
        "production.generation: Input should be less than or equal to 9223372036854775807",
        id="generation-past-64-bits",
    ),
    pytest.param(
        "source: x\nlimits:\n  memory: " + "9" * 400 + "G\n",
        3,
        "limits.memory: memory must be at most 1024T",
        id="memory-past-any-host",
    ),
    pytest.param(
        "source: x\nproduction:\n  generation: '3'\n",
        3,
        "production.generation: Input should be a valid integer",
        id="string-generation",
    ),
    pytest.param(
        "source: x\nproduction:\n  generation: 1.5\n",
        3,
        "production.generation: Input should be a valid integer",
        id="float-generation",
    ),
    pytest.param(
        "source: x\nkeep: true\n", 2, "keep: Input should be a valid integer", id="bool-keep"
    ),
    pytest.param(
        "source: x\nkeep: 0\n", 2, "keep: Input should be greater than or equal to 1", id="keep-0"
    ),
    pytest.param(
        "source: x\nruntime: podman\n",
        2,
        "runtime: Input should be 'process', 'docker' or 'swarm'",
        id="runtime",
    ),
    pytest.param(
        "source: x\nhealth:\n  path: healthz\n", 3, "path must start with '/'", id="health-path"
    ),
    pytest.param(
        "source: x\ndeploy:\n  replicas: 0\n",
        3,
        "deploy.replicas: Input should be greater than or equal to 1",
        id="replicas-0",
    ),
    pytest.param(
        "source: x\ndeploy:\n  placement:\n    constraints: ['node.role==manager; rm']\n",
        4,
        "must read <attribute>==<value> or <attribute>!=<value>",
        id="constraint",
    ),
    pytest.param(
        "source: x\ndeploy:\n  healthcheck: []\n",
        3,
        "deploy.healthcheck: List should have at least 1 item",
        id="empty-healthcheck",
    ),
    pytest.param(
        "source: x\nhealth:\n  timeout: 0\n",
        3,
        "health.timeout: Input should be greater than 0",
        id="timeout-0",
    ),
    pytest.param(
        "source: x\nstart:\n  port: 70000\n",
        3,
        "start.port: Input should be less than or equal to 65535",
        id="port",
    ),
    pytest.param(
        "source: x\nbuild:\n  command: '  '\n", 3, "command must not be empty", id="empty-cmd"
    ),
    pytest.param(
        "source: x\nenv:\n  A: 1\n",
        3,
        'env: A must be a string (quote numbers and booleans: "1")',
        id="env-int",
    ),
    pytest.param(
        "source: x\nenv:\n  A: x\n  bad-name: x\n", 4, "String should match pattern", id="env-name"
    ),
    pytest.param(
        "source: x\nproduction: running\n",
        2,
        "production: Input should be a valid dictionary",
        id="section-scalar",
    ),
    pytest.param("source: ''\n", 1, "source: source must not be empty", id="empty-source"),
    pytest.param(
        "source: a\nsource: b\n",
        2,
        "duplicate key 'source' (first defined on line 1)",
        id="dup-key",
    ),
    pytest.param(
        "source: a\nproduction:\n  state: running\n  state: stopped\n",
        4,
        "duplicate key 'state'",
        id="dup-nested-key",
    ),
    pytest.param("source: [a\n", 2, "YAML syntax", id="syntax"),
    pytest.param("source: a\n  keep: 2\n", 2, "YAML syntax", id="bad-indent"),
    pytest.param("- source\n", 1, "the document must be a mapping", id="not-mapping"),
    pytest.param("source: a\n\tkeep: 2\n", 2, "tab character", id="tab"),
    pytest.param("a: &x 1\nsource: *x\n", 1, "anchors and aliases are not allowed", id="anchor"),
    pytest.param("source: !!binary aGk=\n", 1, "unsupported YAML type !!binary", id="binary-tag"),
    pytest.param("source: 2024-01-01\n", 1, "unsupported YAML type !!timestamp", id="timestamp"),
    pytest.param(
        "source: !!python/object:os.system x\n", 1, "unsupported YAML type", id="python-tag"
    ),
    pytest.param("source: a", 1, "does not end with a newline", id="truncated-line"),
    pytest.param("", 1, "file is empty", id="empty"),
    pytest.param("---\nsource: a\n---\nsource: b\n", 3, "YAML syntax", id="two-documents"),
    pytest.param("{source: a, ? [x] : 1}\n", 1, "keys must be plain strings", id="complex-key"),
]


@pytest.mark.parametrize(("text", "line", "message"), INVALID)
def test_invalid(text: str, line: int, message: str) -> None:
    with pytest.raises(DesiredFileError) as info:
        parse(P, text.encode())
    first = info.value.problems[0]
    assert message in first.message
    assert first.line == line, str(first)
    assert str(first).startswith(f"{P}:{line}:")


def test_non_utf8_names_line_and_column() -> None:
    with pytest.raises(DesiredFileError) as info:
        parse(P, b"source: a\nkeep: \xff\n")
    problem = info.value.problems[0]
    assert (problem.line, problem.column) == (2, 7)
    assert "not valid UTF-8" in problem.message


def test_oversized_file_refused_before_parsing() -> None:
    with pytest.raises(DesiredFileError, match="larger than"):
        parse(P, b"source: a\n" + b"#" * (1024 * 1024) + b"\n")


def test_billion_laughs_refused_fast() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    with pytest.raises(DesiredFileError, match="anchors and aliases"):
        parse(P, ("\n".join(lines) + "\n").encode())


def test_every_problem_is_reported() -> None:
    with pytest.raises(DesiredFileError) as info:
        parse(P, b"source: x\nkeep: 0\nproduction:\n  state: up\n  extra: 1\n")
    assert [p.line for p in info.value.problems] == [2, 4, 5]


@pytest.mark.parametrize(
    "bad",
    ["", "A", "-x", "_x", "a" * 64, "a/b", "..", "a.b", "a b", "a\0", "é", "x;rm"],
)
def test_project_id_allowlist_rejects(bad: str) -> None:
    with pytest.raises(InvalidProjectId):
        check_project_id(bad)


@pytest.mark.parametrize("good", ["a", "0", "my-site", "my_site_2", "a" * 63])
def test_project_id_allowlist_accepts(good: str) -> None:
    assert check_project_id(good) == good


def test_digest_changes_with_any_field() -> None:
    a = ProjectSpec.model_validate({"source": "x"})
    b = ProjectSpec.model_validate({"source": "x", "env": {"A": "1"}})
    assert a.digest() != b.digest()
    assert a.digest() == ProjectSpec.model_validate({"source": "x"}).digest()


def test_the_shape_of_a_swarm_service_is_part_of_its_settings() -> None:
    """For swarm, replicas, placement and health are what runs (a change rolls out); for the
    other runtimes they change nothing, and a spec without ``deploy`` keeps its digest."""
    base = {"source": "s", "runtime": "swarm"}
    one = ProjectSpec.model_validate(base)
    two = ProjectSpec.model_validate({**base, "deploy": {"replicas": 2}})
    assert one.instance_config(RuntimeName.PROCESS) != two.instance_config(RuntimeName.PROCESS)
    process = {"source": "s", "runtime": "process"}
    assert ProjectSpec.model_validate(process).instance_config(
        RuntimeName.PROCESS
    ) == ProjectSpec.model_validate({**process, "deploy": {"replicas": 2}}).instance_config(
        RuntimeName.PROCESS
    )
    plain = ProjectSpec.model_validate({"source": "s"})
    added = {"deploy": True, "limits": True, "build": {"limits"}, "start": {"writable"},
             "sleep": True, "previews": True, "rollback": True}  # fmt: skip
    before = json.dumps(plain.model_dump(mode="json", exclude=added), sort_keys=True,
                        separators=(",", ":"))  # fmt: skip
    assert plain.digest() == hashlib.sha256(before.encode()).hexdigest()[:16]  # as before it
    assert plain.digest() == ProjectSpec.model_validate({"source": "s", "deploy": {}}).digest()
    assert (
        plain.digest()
        != ProjectSpec.model_validate({"source": "s", "deploy": {"replicas": 3}}).digest()
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "memory=512M,cpu=0.5,pids=64,disk=2G",
            Limits(memory=512 << 20, cpu=0.5, pids=64, disk=2 << 30),
        ),
        ("memory=1.5GiB", Limits(memory=3 << 29)),
        ("", Limits()),
    ],
)
def test_limits_in_the_daemons_form(text: str, expected: Limits) -> None:
    assert Limits.parse(text) == expected
    assert Limits.parse(expected.describe() if not expected.empty else "") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("memory=lots", "memory 'lots' must be a size"),
        ("memory=1M", "memory must be at least 4M"),
        ("cpu=x", "cpu must be a number"),
        ("swap=1G", "expected memory=SIZE"),
        ("cpu=0", "greater than 0"),
    ],
)
def test_bad_limits_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits.parse(text)


def test_limits_over_a_maximum_and_defaults() -> None:
    maximum = Limits.parse("memory=256M,cpu=1")
    assert Limits.parse("memory=1G").over(maximum, "limits") == (
        "limits.memory 1G is over this host's maximum 256M"
    )
    assert Limits.parse("cpu=1,pids=4096").over(maximum, "limits") is None
    assert Limits.parse("cpu=0.5").otherwise(maximum) == Limits(memory=256 << 20, cpu=0.5)
    spec = ProjectSpec.model_validate({"source": "s", "limits": {"memory": "128M"}})
    assert spec.limits.memory == 128 << 20
