"""The pieces of ``--site-users`` that need no service manager: the launcher a site unit runs
(real files, a real exec) and what the daemon makes readable for the site's user. The units
themselves are proven under a real systemd in tests/systemd."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import pytest

from reconciler.runtimes.process.runtime import site_instance
from reconciler.runtimes.systemd import SiteUnits, ended_in_words, pump_lines, readable_by_others
from tests.conftest import PYTHON, REPO


def launch(root: Path) -> subprocess.CompletedProcess[str]:
    """``reconciler.runtimes.process.sitexec`` with its bound-in directory at ``root``."""
    code = f"import sys, reconciler.runtimes.process.sitexec as s; s.SITE_ROOT = {str(root)!r}; sys.exit(s.main())"
    return subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO, check=False
    )


def test_the_launcher_runs_the_command_with_its_output_in_the_log(tmp_path: Path) -> None:
    (tmp_path / "release" / "dist").mkdir(parents=True)
    (tmp_path / "app.log").write_text("--- earlier\n")
    run = {
        "argv": ["/bin/sh", "-c", 'echo "$GREETING from $(pwd)"; echo oops >&2; exit 3'],
        "cwd": str(tmp_path / "release" / "dist"),
        "env": {"GREETING": "hello", "PATH": "/usr/bin:/bin"},
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    result = launch(tmp_path)
    assert result.returncode == 3
    assert (tmp_path / "app.log").read_text() == (
        f"--- earlier\nhello from {tmp_path / 'release' / 'dist'}\noops\n"
    )


def test_the_launcher_says_what_it_cannot_read_or_run(tmp_path: Path) -> None:
    (tmp_path / "app.log").touch()
    missing = launch(tmp_path)
    assert missing.returncode == 78 and "cannot read what to run" in missing.stderr
    (tmp_path / "run.json").write_text(json.dumps({"argv": [], "cwd": "/", "env": {}}))
    assert launch(tmp_path).returncode == 78
    run = {"argv": ["/nonexistent/app"], "cwd": "/", "env": {}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    gone = launch(tmp_path)
    assert gone.returncode == 127  # told in the site's log, where its start failure is read
    assert "cannot run /nonexistent/app" in (tmp_path / "app.log").read_text()


def test_a_release_is_made_readable_but_not_its_logs(tmp_path: Path) -> None:
    release = tmp_path / "abcd1234"
    (release / "dist" / "bin").mkdir(parents=True)
    (release / "logs").mkdir()
    page, tool, record = (
        release / "dist" / "index.html",
        release / "dist" / "bin" / "run",
        (release / "logs" / "instance.json"),
    )
    for path, mode in ((page, 0o600), (tool, 0o700), (record, 0o600)):
        path.write_text("x")
        path.chmod(mode)
    for directory in (release, release / "dist", release / "dist" / "bin", release / "logs"):
        directory.chmod(0o700)
    outside = tmp_path / "outside.txt"
    outside.write_text("not the release's")
    outside.chmod(0o600)
    (release / "dist" / "link").symlink_to(outside)
    readable_by_others(release)
    assert stat.S_IMODE(page.stat().st_mode) == 0o604
    assert stat.S_IMODE(tool.stat().st_mode) == 0o705
    assert stat.S_IMODE((release / "dist" / "bin").stat().st_mode) == 0o705
    assert stat.S_IMODE(release.stat().st_mode) == 0o705
    assert stat.S_IMODE(record.stat().st_mode) == 0o600, "the daemon's records stay its own"
    assert stat.S_IMODE((release / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600, "a link is not followed"


def test_site_users_need_the_data_dir_the_template_binds_from(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the data dir /var/lib/reconciler"):
        SiteUnits(tmp_path)


def test_a_site_units_user_name_is_valid_for_any_project() -> None:
    """systemd takes a dynamic user's name of 31 characters at most; the unit's user is
    ``reconciler-<instance>``, whatever the project id's length."""
    longest = site_instance("p" * 63, "abcd1234", "0123abcd")
    assert re.fullmatch(r"[0-9a-f]{16}", longest) and len(f"reconciler-{longest}") <= 31
    assert site_instance("www", "abcd1234", "0123abcd") != site_instance(
        "www", "abcd1234", "0123abce"
    ), "a new config is a new instance, beside the old one"


def test_build_output_is_handed_on_in_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "build.log"
    out.write_bytes(b"one\ntw")
    lines: list[str] = []
    with open(out, "rb") as fh:
        pump_lines(fh, lines.append)
        assert lines == ["one"], "a line still being written waits"
        with open(out, "ab") as writer:
            writer.write(b"o\nthree")
        pump_lines(fh, lines.append)
        pump_lines(fh, lines.append, final=True)
    assert lines == ["one", "two", "three"]


def test_how_a_unit_ended_is_told_in_words() -> None:
    limit = {"MemoryMax": str(64 << 20)}
    assert ended_in_words({"ExecMainCode": "1", "ExecMainStatus": "3"}) == "exited with code 3"
    assert "memory limit is 67108864" in ended_in_words(
        {**limit, "ExecMainCode": "2", "ExecMainStatus": "9"}
    )
    assert "a process of it was killed by signal 9" in ended_in_words(
        {**limit, "ExecMainCode": "1", "ExecMainStatus": "137"}
    )
    assert ended_in_words({"ExecMainCode": "1", "ExecMainStatus": "137"}) == "exited with code 137"
    assert "more memory than its limit" in ended_in_words({**limit, "Result": "oom-kill"})
