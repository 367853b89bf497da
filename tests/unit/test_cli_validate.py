from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, write


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "reconciler", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_validate_repo_desired_dir_passes() -> None:
    result = run("validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "1 desired file(s) valid"


def test_validate_prints_path_line_col_and_fails(tmp_path: Path) -> None:
    (tmp_path / "d" / "x").mkdir(parents=True)
    good = write(tmp_path / "d" / "ok.yaml", "source: x\n")
    bad = write(tmp_path / "d" / "bad.yaml", "source: x\nproduction:\n  state: up\n  foo: 1\n")
    result = run("validate", str(tmp_path / "d"))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{bad}:3:10: production.state: Input should be 'running' or 'stopped'",
        f"{bad}:4:3: unknown key 'foo' in production",
    ]
    assert "2 problem(s) in 2 file(s)" in result.stderr
    assert run("validate", str(good)).returncode == 0


def test_validate_warns_about_a_source_that_does_not_exist(tmp_path: Path) -> None:
    path = write(tmp_path / "d" / "www.yaml", "source: ../sites/www\n")
    result = run("validate", str(path))
    assert result.returncode == 0, "a warning: the daemon may run where the source exists"
    resolved = tmp_path / "sites" / "www"
    assert result.stdout.splitlines() == [
        f"{path}: warning: source ../sites/www is not a directory here (resolved: {resolved}); "
        "the daemon reads it on the host it runs on",
        "1 desired file(s) valid",
    ]


def test_validate_missing_path(tmp_path: Path) -> None:
    result = run("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "no such file or directory" in result.stdout


def test_schema_is_json_schema() -> None:
    result = run("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["source"]
    assert set(schema["properties"]) == {
        "source",
        "runtime",
        "production",
        "build",
        "start",
        "health",
        "keep",
        "rollback",
        "env",
        "domains",
        "notify",
        "deploy",
        "limits",
        "sleep",
        "previews",
    }


def test_usage_error_exits_2() -> None:
    assert run("frobnicate").returncode == 2


def test_validate_reports_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "nowhere.yaml", tmp_path / "d" / "www.yaml")
    result = run("validate", str(tmp_path / "d"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.splitlines()[0] == (
        f"{tmp_path / 'd' / 'www.yaml'}:1:1: a symlink to {tmp_path / 'nowhere.yaml'}, "
        "which does not exist"
    )


def test_a_data_dir_too_deep_for_the_edge_socket_is_refused_with_a_reason(
    tmp_path: Path,
) -> None:
    """A unix socket's path has at most 107 bytes; the edge's would not fit: say so at
    startup (exit 2), instead of an edge that never starts."""
    deep = tmp_path / ("d" * 120)
    result = run("daemon", "--desired", str(tmp_path / "desired"), "--data", str(deep))
    assert result.returncode == 2
    assert "too long for the edge's admin socket" in result.stderr
    assert "use a shorter --data path" in result.stderr
    assert not deep.exists(), "nothing was created"


def test_validate_git_sources(tmp_path: Path) -> None:
    remote = write(tmp_path / "d" / "remote.yaml",
                   "source: {git: 'https://user:pw@git.example.com/www.git', ref: main}\n")  # fmt: skip
    local = write(tmp_path / "d" / "local.yaml", "source:\n  git: ../repos/www.git\n")
    result = run("validate", str(remote), str(local))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"{local}: warning: git repository {tmp_path / 'repos' / 'www.git'} is not here; the "
        "daemon fetches it on the host it runs on",
        "2 desired file(s) valid",
    ]
    hostile = write(tmp_path / "e" / "bad.yaml", "source: {git: '--upload-pack=touch /tmp/x'}\n")
    helper = write(tmp_path / "e" / "helper.yaml", "source: {git: 'ext::sh -c touch% /tmp/x'}\n")
    dots = write(tmp_path / "e" / "dots.yaml", "source: {git: /r, ref: 'main/../../x'}\n")
    result = run("validate", str(tmp_path / "e"))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{hostile}:1:15: source.git: git must be a path or URL (not starting with '-', one line)",
        f"{dots}:1:24: source.ref: ref must be a branch or tag name, refs/..., or a commit SHA "
        "(no '..', spaces or leading '-')",
        f"{helper}:1:15: source.git: git remote helpers (<transport>::<address>) are not allowed",
    ]


def test_the_daemons_limits_are_parsed_and_held_to_its_maxima(tmp_path: Path) -> None:
    from reconciler.cli.main import build_parser, config_from_args

    base = ["daemon", "--desired", str(tmp_path / "d"), "--data", str(tmp_path / "data")]
    parser = build_parser()
    config = config_from_args(parser.parse_args(
        [*base, "--limits", "memory=256M,cpu=0.5", "--build-limits", "pids=64",
         "--max-limits", "memory=1G,cpu=2,pids=512,disk=2G"]
    ))  # fmt: skip
    assert config.limits.memory == 256 << 20 and config.limits.cpu == 0.5
    assert config.build_limits.pids == 64
    assert config.max_limits.disk == 2 << 30 and config.max_limits.pids == 512
    over = [*base, "--limits", "memory=2G", "--max-limits", "memory=1G"]
    with pytest.raises(ValueError, match=r"--limits.memory 2G is over .*1G \(--max-limits\)"):
        config_from_args(parser.parse_args(over))
    with pytest.raises(ValueError, match="--max-limits: "):
        config_from_args(parser.parse_args([*base, "--max-limits", "memory=lots"]))
