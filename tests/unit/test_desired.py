from __future__ import annotations

import os
import textwrap
import threading
import time
from pathlib import Path

import pytest

from reconciler.core.spec import ProjectId, ProjectSpec
from reconciler.stores.desired import (
    DesiredFileError,
    DesiredStore,
    EditError,
    LastGood,
    ProjectNotFound,
    parse,
    set_values,
)
from tests.conftest import write

COMMENTED = textwrap.dedent(
    """\
    # Marketing site. Owner: web team.
    source: ../sites/www        # relative to this file

    production:
      # flip to stopped to take it down
      state: stopped
      version: latest
      generation: 3   # bumped by deploys

    health:
      path: /healthz
    keep: 3
    """
)

SITE = ProjectId("www")


def test_edit_changes_only_the_value(desired_dir: Path) -> None:
    path = write(desired_dir / "www.yaml", COMMENTED)
    store = DesiredStore(desired_dir)
    result = store.edit(SITE, lambda s: {"production.generation": s.production.generation + 1})
    assert result.changed and result.after.production.generation == 4
    assert path.read_text() == COMMENTED.replace("generation: 3 ", "generation: 4 ")


def test_edit_several_fields_and_insert_missing_key(desired_dir: Path) -> None:
    text = "# c1\nsource: x  # c2\nproduction:\n  state: stopped  # c3\n\n# c4\nkeep: 2\n"
    path = write(desired_dir / "www.yaml", text)
    DesiredStore(desired_dir).edit(
        SITE,
        lambda s: {"production.state": "running", "production.version": "a1b2c3d4"},
    )
    assert path.read_text() == (
        "# c1\nsource: x  # c2\nproduction:\n  state: running  # c3\n"
        "  version: a1b2c3d4\n\n# c4\nkeep: 2\n"
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param("source: x\n", "source: x\nproduction:\n  generation: 5\n", id="no-section"),
        pytest.param(
            "source: x\nproduction:\nkeep: 2\n",
            "source: x\nproduction:\n  generation: 5\nkeep: 2\n",
            id="empty-section",
        ),
        pytest.param(
            "source: x\nproduction: {state: running}\n",
            "source: x\nproduction: {state: running, generation: 5}\n",
            id="flow-section",
        ),
        pytest.param(
            "source: x\nproduction:\n    state: running\n",
            "source: x\nproduction:\n    state: running\n    generation: 5\n",
            id="four-space-indent",
        ),
        pytest.param(
            "source: x\nproduction:\n  generation: 0x10\n",
            "source: x\nproduction:\n  generation: 5\n",
            id="hex-literal",
        ),
    ],
)
def test_set_values_shapes(before: str, after: str) -> None:
    assert set_values(before, {"production.generation": 5}, path=Path("x.yaml")) == after


def test_edit_writes_strings_safely(desired_dir: Path) -> None:
    write(desired_dir / "www.yaml", "source: x\n")
    text = set_values("source: x\n", {"source": "a: b # c"}, path=Path("x.yaml"))
    assert parse(Path("x.yaml"), text.encode()).source == "a: b # c"
    for tricky in ["yes", "null", "123", "~", "-x", "'q'", '"', "\u00e9t\u00e9"]:
        text = set_values("source: x\n", {"source": tricky}, path=Path("x.yaml"))
        assert parse(Path("x.yaml"), text.encode()).source == tricky


def test_edit_without_changes_writes_nothing(desired_dir: Path) -> None:
    path = write(desired_dir / "www.yaml", COMMENTED)
    before = os.stat(path)
    result = DesiredStore(desired_dir).edit(SITE, lambda s: {})
    assert not result.changed
    result = DesiredStore(desired_dir).edit(SITE, lambda s: {"production.state": "stopped"})
    assert not result.changed
    assert os.stat(path).st_ino == before.st_ino


def test_edit_refuses_invalid_result_and_invalid_file(desired_dir: Path) -> None:
    path = write(desired_dir / "www.yaml", COMMENTED)
    store = DesiredStore(desired_dir)
    with pytest.raises(EditError):
        store.edit(SITE, lambda s: {"production.state": "exploded"})
    assert path.read_text() == COMMENTED
    write(path, COMMENTED + "bogus: 1\n")
    with pytest.raises(DesiredFileError, match="unknown key 'bogus'"):
        store.edit(SITE, lambda s: {"production.generation": 9})
    assert path.read_text().endswith("bogus: 1\n")


def test_edit_unknown_project(desired_dir: Path) -> None:
    with pytest.raises(ProjectNotFound):
        DesiredStore(desired_dir).edit(ProjectId("nope"), lambda s: {})


def test_edit_keeps_file_mode_and_leaves_no_temp_files(desired_dir: Path) -> None:
    path = write(desired_dir / "www.yaml", COMMENTED)
    path.chmod(0o640)
    DesiredStore(desired_dir).edit(SITE, lambda s: {"production.generation": 10})
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in desired_dir.iterdir()) == [".locks", "www.yaml"]


def test_truncated_file_never_replaces_last_good(desired_dir: Path) -> None:
    full = COMMENTED.replace("state: stopped", "state: running")
    path = write(desired_dir / "www.yaml", full)
    store = DesiredStore(desired_dir)
    last_good = LastGood()
    good = store.read(SITE)
    assert good is not None and good.spec is not None
    last_good.remember(SITE, good.spec)
    line_ends = {i + 1 for i, c in enumerate(full) if c == "\n"}
    for cut in range(len(full)):
        if cut in line_ends:
            continue
        path.write_bytes(full[:cut].encode())
        desired = store.read(SITE)
        assert desired is not None
        assert desired.spec is None, f"truncated at {cut} was taken as valid"
        assert last_good.in_force(desired) == good.spec
        assert desired.error is not None
    path.write_text(full)
    assert store.read(SITE) == good


def test_reading_remembers_nothing_last_good_is_explicit(desired_dir: Path) -> None:
    path = write(desired_dir / "www.yaml", "source: x\nproduction:\n  state: running\n")
    store = DesiredStore(desired_dir)
    first = store.read(SITE)
    assert first is not None and first.spec is not None
    write(path, "source: x\nproduction:\n  state: running\n  replicas: 3\n")
    desired = store.read(SITE)
    assert desired is not None and desired.spec is None
    assert desired.error == f"{path}:4:3: unknown key 'replicas' in production"
    last_good = LastGood()
    assert last_good.in_force(desired) is None  # nothing was remembered by reading
    last_good.seed(SITE, first.spec)
    assert last_good.in_force(desired) == first.spec
    newer = first.spec.model_copy(update={"keep": 5})
    last_good.seed(SITE, newer)  # a seed never replaces what is known
    assert last_good.get(SITE) == first.spec
    last_good.remember(SITE, newer)
    assert last_good.get(SITE) == newer


def test_scan_reports_bad_names_duplicates_and_skips_hidden(desired_dir: Path) -> None:
    write(desired_dir / "good.yaml", "source: x\n")
    write(desired_dir / "twice.yaml", "source: x\n")
    write(desired_dir / "twice.yml", "source: y\n")
    write(desired_dir / "Bad Name.yaml", "source: x\n")
    write(desired_dir / ".good.yaml.abc.tmp", "garbage")
    write(desired_dir / ".hidden.yaml", "garbage")
    write(desired_dir / "notes.txt", "garbage")
    scan = DesiredStore(desired_dir).scan()
    assert sorted(scan.projects) == ["good", "twice"]
    assert scan.projects["good"].valid
    assert "defined twice" in (scan.projects["twice"].error or "")
    assert len(scan.orphans) == 1 and "invalid project id" in scan.orphans[0].message


def test_fifo_and_directory_named_like_desired_files(desired_dir: Path) -> None:
    os.mkfifo(desired_dir / "pipe.yaml")
    (desired_dir / "dir.yaml").mkdir()
    scan = DesiredStore(desired_dir).scan()  # must not block on the fifo
    assert "not a regular file" in (scan.projects["pipe"].error or "")
    assert scan.projects["dir"].error


def test_spec_source_dir_relative_to_file(tmp_path: Path) -> None:
    spec = ProjectSpec.model_validate({"source": "../sites/www"})
    assert spec.source_dir(tmp_path / "desired" / "www.yaml") == tmp_path / "sites" / "www"
    spec = ProjectSpec.model_validate({"source": "/srv/www"})
    assert spec.source_dir(tmp_path / "desired" / "www.yaml") == Path("/srv/www")


def test_a_file_without_final_newline_is_read_once_settled(desired_dir: Path) -> None:
    """A write under way is refused; the same bytes unchanged for SETTLE seconds (an editor
    that leaves the newline out) are read, and an edit through the store adds the newline."""
    path = write(desired_dir / "www.yaml", COMMENTED.rstrip("\n"))
    store = DesiredStore(desired_dir)
    fresh = store.read(SITE)
    assert fresh is not None and fresh.spec is None and fresh.settles_at is not None
    assert "does not end with a newline" in str(fresh.problems[0])
    with pytest.raises(DesiredFileError):
        store.edit(SITE, lambda s: {"production.state": "running"})
    old = path.stat().st_mtime - 5
    os.utime(path, (old, old))
    settled = store.read(SITE)
    assert settled is not None and settled.spec is not None and settled.settles_at is None
    assert settled.spec.production.generation == 3
    store.edit(SITE, lambda s: {"production.state": "running"})
    assert path.read_text().endswith(
        "generation: 3   # bumped by deploys\n\nhealth:\n  path: /healthz\nkeep: 3\n"
    )


def test_a_dangling_symlink_is_an_invalid_file_not_a_missing_one(desired_dir: Path) -> None:
    os.symlink(desired_dir / "gone.yaml", desired_dir / "www.yaml")
    store = DesiredStore(desired_dir)
    desired = store.read(SITE)
    assert desired is not None and desired.spec is None
    assert "a symlink to" in str(desired.problems[0]) and "does not exist" in str(
        desired.problems[0]
    )
    assert SITE in store.scan().projects


def test_an_edit_never_replaces_a_symlinked_desired_file(desired_dir: Path, tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere" / "www.yaml", COMMENTED)
    os.symlink(target, desired_dir / "www.yaml")
    store = DesiredStore(desired_dir)
    assert store.read(SITE).spec is not None  # type: ignore[union-attr]
    with pytest.raises(EditError, match="is a symlink"):
        store.edit(SITE, lambda s: {"production.state": "running"})
    assert (desired_dir / "www.yaml").is_symlink()
    assert target.read_text() == COMMENTED


def test_an_edit_never_overwrites_an_editors_save(desired_dir: Path) -> None:
    """An editor saving (write a temp file, rename it over) 60 times while two threads edit
    through the store: every save of the editor survives (each adds a line to what it read),
    and every edit of the store lands (each bumps the generation)."""
    path = write(desired_dir / "www.yaml", COMMENTED)
    store = DesiredStore(desired_dir)
    saves, edits = 60, 2 * 60

    def editor() -> None:
        for number in range(saves):
            text = path.read_text() + f"# save {number}\n"
            temp = desired_dir / f".www.yaml.{number}.swp"
            temp.write_text(text)
            os.rename(temp, path)
            time.sleep(0.02)

    failed: list[BaseException] = []

    def api() -> None:
        try:
            for _ in range(edits // 2):
                store.edit(SITE, lambda s: {"production.generation": s.production.generation + 1})
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=editor), threading.Thread(target=api),
               threading.Thread(target=api)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failed, failed
    text = path.read_text()
    lost = [n for n in range(saves) if f"# save {n}\n" not in text]
    assert not lost, f"{len(lost)} of {saves} saves of the editor were overwritten: {lost}"
    # the editor's read-modify-write may undo a bump (its own race); none of the store's
    # edits went missing for lack of a compare: the generation counts at most every edit
    found = store.read(SITE)
    assert found is not None and found.spec is not None
    assert 3 < found.spec.production.generation <= 3 + edits


def test_a_file_cut_short_at_a_line_end_waits_until_it_settles(desired_dir: Path) -> None:
    full = COMMENTED.replace("state: stopped", "state: running")
    path = write(desired_dir / "www.yaml", full)
    store = DesiredStore(desired_dir)
    good = store.read(SITE)
    assert good is not None and good.valid
    cut = full[: full.index("health:")]  # whole lines: it parses, and says less
    path.write_text(cut)
    waiting = store.read(SITE)
    assert waiting is not None and not waiting.valid and waiting.settles_at is not None
    assert "cut short" in str(waiting.error)
    settled = time.time() - 5
    os.utime(path, (settled, settled))  # unchanged for longer than it takes to settle
    read = store.read(SITE)
    assert read is not None and read.spec is not None and read.spec.health.path == "/"
    path.write_text(full)  # grown again: read at once
    assert store.read(SITE) == good
