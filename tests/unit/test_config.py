"""Config owns its options, its validation and its derivation: the CLI's flags are generated
from its fields, a Config made anywhere is checked, and one object names the data dir's paths."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from reconciler.cli.main import add_server_options, config_from_args
from reconciler.core.config import Config, DataLayout, PortRange, options
from reconciler.core.kinds import EdgeMode, RuntimeName
from reconciler.core.logfiles import LogLimits
from reconciler.daemon.lifecycle import Lifecycle, Step


def parse(*argv: str) -> Config:
    parser = argparse.ArgumentParser()
    add_server_options(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_every_option_is_a_flag_and_its_default_is_the_fields(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for _field, option in options():
        monkeypatch.delenv(option.env, raising=False)
    monkeypatch.chdir(tmp_path)
    assert parse() == Config()
    flags = {option.flag for _field, option in options()}
    assert {"--listen", "--port-range", "--edge", "--no-watch", "--log-keep"} <= flags
    parser = argparse.ArgumentParser()
    add_server_options(parser)
    text = " ".join(parser.format_help().split())
    assert "(default 3001-3999); env RECONCILER_PORT_RANGE" in text


def test_a_flag_wins_over_its_variable_which_wins_over_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECONCILER_PORT_RANGE", "4001-4099")
    monkeypatch.setenv("RECONCILER_NO_WATCH", "1")
    monkeypatch.setenv("RECONCILER_NOTIFY_URL", "http://a.example,http://b.example")
    monkeypatch.setenv("RECONCILER_LOG_KEEP", "9")
    config = parse("--listen", "0.0.0.0:8080", "--runtime", "docker", "--log-max-bytes", "5000")
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 8080)
    assert config.port_range == PortRange(4001, 4099) and config.watch is False
    assert config.default_runtime == RuntimeName.DOCKER
    assert config.notify_urls == ("http://a.example", "http://b.example")
    assert config.logs == LogLimits(max_bytes=5000, keep=9)
    assert parse("--port-range", "5001-5002").port_range == PortRange(5001, 5002)
    assert parse("--min-free-mb", "3", "--stream-cap", "0").min_free_bytes == 3 << 20
    assert parse("--stream-cap", "0").stream_cap == 1, "clamped as before"
    assert parse("--access-logs", "off").access_logs is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--port-range", "9-1"], "--port-range: port range '9-1'", id="port-range"),
        pytest.param(
            ["--listen", "nowhere"], "--listen: 'nowhere' must look like HOST:PORT", id="listen"
        ),
        pytest.param(
            ["--desired-ref", "a..b"], "--desired-ref 'a..b' is not a branch name", id="ref"
        ),
        pytest.param(["--git-author", "nobody"], "git author 'nobody' must look like", id="author"),
        pytest.param(
            ["--notify-url", "ftp://x"], "--notify-url 'ftp://x' must be an http", id="notify"
        ),
        pytest.param(
            ["--limits", "memory=2G", "--max-limits", "memory=1G"],
            "--limits.memory 2G is over",
            id="over-max",
        ),
    ],
)
def test_a_bad_value_names_its_flag(argv: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse("--data", str(tmp_path), *argv)
    assert message in str(info.value)


def test_a_config_made_anywhere_is_checked_and_derives_its_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a branch name"):
        Config(data_dir=tmp_path, desired_git_ref="-x")
    with pytest.raises(ValueError, match="too long for the edge's admin socket"):
        Config(data_dir=tmp_path / ("d" * 120))
    assert Config(data_dir=tmp_path / ("d" * 120), edge=EdgeMode.OFF).edge == EdgeMode.OFF
    config = Config(data_dir=Path("rel"), desired_git="https://git.example/desired.git")
    assert config.data_dir.is_absolute()
    assert config.desired_dir == config.data_dir / "desired-git" / "current"
    layout = DataLayout(tmp_path)
    assert config.layout == DataLayout(config.data_dir)
    assert layout.state_db == tmp_path / "state.db"
    assert layout.releases == tmp_path / "production"
    assert layout.access_log == tmp_path / "edge" / "access.log"
    assert layout.secrets == tmp_path / "hooks" / "secrets"


def test_the_lifecycle_stops_in_reverse_and_past_a_failing_part() -> None:
    seen: list[str] = []

    def broken() -> None:
        seen.append("stop b")
        raise RuntimeError("b will not stop")

    parts = [
        Step("a", lambda: seen.append("start a"), lambda: seen.append("stop a")),
        Step("b", lambda: seen.append("start b"), broken),
        Step("c", lambda: seen.append("start c"), lambda: seen.append("stop c")),
    ]
    life = Lifecycle(list(parts))
    life.start()
    life.stop()
    assert seen == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    life.stop()
    assert seen[-1] == "stop a", "a second stop stops nothing again"


def test_the_stores_follow_where_the_daemon_takes_desired_state_from(tmp_path: Path) -> None:
    from reconciler.stores.desired.git import ConfigRepo
    from reconciler.stores.opened import open_stores

    config = Config(desired_dir=tmp_path / "desired", data_dir=tmp_path / "data")
    plain = open_stores(config)
    assert plain.config_repo is None and plain.desired.directory == config.desired_dir
    assert plain.desired.committer is None
    plain.close()
    # a daemon applying a configuration repository keeps its settings: others follow them
    ConfigRepo(config.layout.desired_git, "https://git.example/desired.git").save_settings()
    follows = open_stores(config)
    assert follows.config_repo is not None and follows.desired.committer is follows.config_repo
    assert follows.desired.directory == config.layout.desired_git / "current"
    follows.close()
    # a daemon on a plain desired dir forgets them, so nobody writes commits
    open_stores(config, applies=True).close()
    again = open_stores(config)
    assert again.config_repo is None
    again.close()
