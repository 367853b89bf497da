from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from reconciler.core.errors import ReleaseError
from reconciler.core.spec import ProjectId
from reconciler.stores.releases import ReleaseStore, hash_dist

P = ProjectId("site")


def make_source(root: Path, content: str) -> Path:
    (root / "dist" / "assets").mkdir(parents=True, exist_ok=True)
    (root / "dist" / "index.html").write_text(content)
    (root / "dist" / "assets" / "app.js").write_text("console.log(1)")
    (root / "package.json").write_text("{}")
    (root / ".git").mkdir(exist_ok=True)
    (root / ".git" / "HEAD").write_text("ref")
    (root / "node_modules" / "x").mkdir(parents=True, exist_ok=True)
    return root


def stage(store: ReleaseStore, source: Path, generation: int = 1):  # type: ignore[no-untyped-def]
    staging = store.begin(P)
    (staging.logs / "build.log").write_text(f"build {generation}\n")
    return store.commit(
        staging,
        dist=source / "dist",
        generation=generation,
        details={"runtime": "process"},
    )


def test_stage_layout_and_manifest(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    src = make_source(tmp_path / "src", "v1")
    release = stage(store, src)
    assert release.hash == release.digest[:8] == hash_dist(src / "dist")[:8]
    assert sorted(p.name for p in release.path.iterdir()) == ["dist", "logs", "manifest.json"]
    manifest = json.loads((release.path / "manifest.json").read_text())
    assert manifest["digest"] == release.digest and manifest["generation"] == 1
    assert manifest["createdAt"].endswith("Z") and manifest["runtime"] == "process"
    assert hash_dist(release.dist) == release.digest
    assert (release.logs / "build.log").read_text() == "build 1\n"
    assert not [p for p in release.path.parent.iterdir() if p.name.startswith(".staging-")]


def test_same_content_reuses_release(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    src = make_source(tmp_path / "src", "v1")
    first = stage(store, src, 1)
    again = stage(store, src, 2)
    assert again.reused and again.path == first.path and again.created_at == first.created_at
    assert (again.logs / "build.log").read_text() == "build 2\n"
    assert len(store.versions(P)) == 1


def test_source_dir_as_output_leaves_out_git(tmp_path: Path) -> None:
    """``build.output: .``: the release is the source tree less its ``.git``, so a commit
    alone (a new ``.git``) is no new version."""
    store = ReleaseStore(tmp_path / "production")
    src = make_source(tmp_path / "src", "v1")
    staging = store.begin(P)
    release = store.commit(staging, dist=src, dist_exclude=[".git"], generation=1)
    assert sorted(p.name for p in release.dist.iterdir()) == [
        "dist",
        "node_modules",
        "package.json",
    ]
    (src / ".git" / "HEAD").write_text("another commit")
    again = store.commit(store.begin(P), dist=src, dist_exclude=[".git"], generation=2)
    assert again.reused and again.hash == release.hash
    assert hash_dist(src, skip_top=[".git"]) == release.digest != hash_dist(src)


def test_prefix_collision_is_an_error(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    src = make_source(tmp_path / "src", "v1")
    release = stage(store, src)
    manifest = json.loads((release.path / "manifest.json").read_text())
    manifest["digest"] = release.hash + "0" * 56
    (release.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ReleaseError, match="prefix collision"):
        stage(store, src)
    assert not [p for p in release.path.parent.iterdir() if p.name.startswith(".staging-")]


def test_failed_commit_leaves_nothing(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    src = make_source(tmp_path / "src", "v1")
    os.symlink("/etc/passwd", src / "dist" / "evil")
    with pytest.raises(ReleaseError):
        stage(store, src)
    assert [p.name for p in store.project_dir(P).iterdir()] == []


def test_switch_history_and_current(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    a = stage(store, make_source(tmp_path / "a", "A"))
    time.sleep(0.005)
    b = stage(store, make_source(tmp_path / "b", "B"))
    assert store.current(P) is None
    store.switch(P, a.hash)
    assert os.readlink(store.project_dir(P) / "current") == a.hash
    store.switch(P, b.hash)
    assert store.current(P) == b.hash
    history = store.history(P)
    assert [(v.hash, v.is_active) for v in history] == [(b.hash, True), (a.hash, False)]
    with pytest.raises(ReleaseError):
        store.switch(P, "deadbeef")
    assert store.current(P) == b.hash


def test_cleanup_removes_leftovers(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    release = stage(store, make_source(tmp_path / "a", "A"))
    leftover = store.begin(P)
    (leftover.path / "dist").mkdir()
    os.symlink(release.hash, store.project_dir(P) / ".current-abc")
    assert len(store.cleanup()) == 2
    assert [p.name for p in store.project_dir(P).iterdir()] == [release.hash]


def test_retention_keeps_most_recently_active_not_oldest_built(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    v = [stage(store, make_source(tmp_path / f"s{i}", f"v{i}"), i) for i in range(3)]
    for release in v:
        store.switch(P, release.hash)
        time.sleep(0.002)
    store.switch(P, v[0].hash)  # rollback to the oldest build
    time.sleep(0.002)
    v3 = stage(store, make_source(tmp_path / "s3", "v3"), 3)
    store.switch(P, v3.hash)  # a new deploy
    removed = store.prune(P, keep=2)
    kept = {r.hash for r in store.versions(P)}
    assert kept == {v3.hash, v[0].hash}, "the version that was running must be kept"
    assert set(removed) == {v[1].hash, v[2].hash}


def test_retention_never_removes_protected(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    v = [stage(store, make_source(tmp_path / f"s{i}", f"v{i}"), i) for i in range(4)]
    store.switch(P, v[3].hash)
    store.prune(P, keep=1, protect={v[0].hash, v[1].hash})
    assert {r.hash for r in store.versions(P)} == {v[0].hash, v[1].hash, v[3].hash}
    store.prune(P, keep=1)
    assert [r.hash for r in store.versions(P)] == [v[3].hash]
    assert not [p for p in store.project_dir(P).iterdir() if p.name.startswith(".trash-")]


def test_never_activated_versions_go_first(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    old = stage(store, make_source(tmp_path / "a", "A"))
    store.switch(P, old.hash)
    failed = stage(store, make_source(tmp_path / "b", "B"))  # built later, never ran
    current = stage(store, make_source(tmp_path / "c", "C"))
    store.switch(P, current.hash)
    store.prune(P, keep=2)
    assert {r.hash for r in store.versions(P)} == {old.hash, current.hash}
    assert failed.hash not in {v.hash for v in store.history(P)}


def test_a_current_replaced_by_a_directory_is_restored(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    a = stage(store, make_source(tmp_path / "a", "A"))
    store.switch(P, a.hash)
    current = store.project_dir(P) / "current"
    current.unlink()
    current.mkdir()
    (current / "index.html").write_text("by hand")
    assert store.current(P) is None
    store.switch(P, a.hash)
    assert os.readlink(current) == a.hash and store.current(P) == a.hash
    assert not [p for p in store.project_dir(P).iterdir() if p.name.startswith(".trash-")]


def test_a_sparse_file_stays_sparse_in_the_release(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    with open(dist / "disk.img", "wb") as fh:
        fh.write(b"head")
        fh.seek(256 * 1024 * 1024)
        fh.write(b"tail")
    store = ReleaseStore(tmp_path / "production")
    release = store.commit(store.begin(P), dist=dist)
    copy = release.dist / "disk.img"
    assert copy.stat().st_size == (dist / "disk.img").stat().st_size
    assert copy.stat().st_blocks * 512 < 16 * 1024 * 1024, "holes kept, not 256 MiB of zeros"
    with open(copy, "rb") as fh:
        assert fh.read(4) == b"head"
        fh.seek(256 * 1024 * 1024)
        assert fh.read() == b"tail"
    assert hash_dist(release.dist) == release.digest


def test_unchanged_files_are_hard_links_to_the_current_release(tmp_path: Path) -> None:
    """A new release shares every file whose bytes and mode did not change with the release
    ``current`` points at; a changed file (even one of the same size, or changing only past
    the first chunk, or only its executable bit) is a copy of its own."""
    dist = tmp_path / "dist"
    (dist / "sub").mkdir(parents=True)
    (dist / "same.txt").write_text("unchanged")
    (dist / "sub" / "same.bin").write_bytes(b"x" * 3_000_000)
    (dist / "same-size.txt").write_text("aaaa")
    (dist / "tail.bin").write_bytes(b"y" * 2_500_000)
    (dist / "mode.sh").write_text("echo hi")
    (dist / "empty").write_bytes(b"")
    store = ReleaseStore(tmp_path / "production")
    first = store.commit(store.begin(P), dist=dist)
    store.switch(P, first.hash)

    (dist / "same-size.txt").write_text("bbbb")
    (dist / "tail.bin").write_bytes(b"y" * 2_000_000 + b"z" * 500_000)  # differs in chunk 2
    (dist / "mode.sh").chmod(0o755)
    second = store.commit(store.begin(P), dist=dist)

    def inode(release, rel):  # type: ignore[no-untyped-def]
        return (release.dist / rel).stat().st_ino

    assert inode(second, "same.txt") == inode(first, "same.txt")
    assert inode(second, "sub/same.bin") == inode(first, "sub/same.bin")
    for rel in ("same-size.txt", "tail.bin", "mode.sh", "empty"):
        assert inode(second, rel) != inode(first, rel), rel
    assert (second.dist / "same-size.txt").read_text() == "bbbb"
    assert (first.dist / "same-size.txt").read_text() == "aaaa"
    assert (second.dist / "tail.bin").read_bytes() == b"y" * 2_000_000 + b"z" * 500_000
    assert (first.dist / "tail.bin").read_bytes() == b"y" * 2_500_000
    assert os.access(second.dist / "mode.sh", os.X_OK)
    assert not os.access(first.dist / "mode.sh", os.X_OK)
    assert hash_dist(second.dist) == second.digest
    assert hash_dist(first.dist) == first.digest


def test_a_link_never_leaves_the_base_release_through_a_symlink(tmp_path: Path) -> None:
    """A base release whose file was replaced by a symlink (outside tampering) is not
    followed: the new release gets a copy of the source's bytes."""
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "page.html").write_text("page")
    store = ReleaseStore(tmp_path / "production")
    first = store.commit(store.begin(P), dist=dist)
    store.switch(P, first.hash)
    outside = tmp_path / "outside.html"
    outside.write_text("page")
    (first.dist / "page.html").unlink()
    (first.dist / "page.html").symlink_to(outside)
    (dist / "other.html").write_text("new")
    second = store.commit(store.begin(P), dist=dist)
    copy = second.dist / "page.html"
    assert not copy.is_symlink() and copy.stat().st_ino != outside.stat().st_ino
    assert copy.read_text() == "page"


def test_an_image_is_part_of_the_version(tmp_path: Path) -> None:
    """Two images with the same files are two versions (what runs is the image); the same
    image again reuses its version; the manifest's digest stays the dist's."""
    store = ReleaseStore(tmp_path / "production")
    src = make_source(tmp_path / "src", "v1")

    def image(identity: str):  # type: ignore[no-untyped-def]
        return store.commit(store.begin(P), dist=src / "dist", identity=identity)

    first, second, again = image("sha256:aaa"), image("sha256:bbb"), image("sha256:aaa")
    assert first.hash != second.hash
    assert first.hash != hash_dist(src / "dist")[:8]
    assert again.reused and again.hash == first.hash
    assert first.digest == second.digest == hash_dist(first.dist)
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["identity"] == "sha256:aaa"


def test_task_files_spread_the_tasks_and_go_when_none_runs(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    tasks = store.project_dir(P) / "tasks"
    assert store.route_tasks(P, ("10.0.0.1:30001", "10.0.0.2:30002"), 4)
    assert {p.name: p.read_text() for p in tasks.iterdir()} == {
        "0": "10.0.0.1:30001", "1": "10.0.0.2:30002", "2": "10.0.0.1:30001", "3": "10.0.0.2:30002",
        # the one name the edge reads them from, in turn
        "@10.0.0.1:30001,10.0.0.2:30002,10.0.0.1:30001,10.0.0.2:30002": "",
    }  # fmt: skip
    assert not store.route_tasks(P, ("10.0.0.1:30001", "10.0.0.2:30002"), 4)  # no change
    assert store.routed_tasks(P) == ("10.0.0.1:30001", "10.0.0.2:30002")
    assert store.route_tasks(P, ("10.0.0.3:30003",), 2)
    assert sorted(p.name for p in tasks.iterdir()) == ["0", "1", "@10.0.0.3:30003,10.0.0.3:30003"]
    assert store.routed_tasks(P) == ("10.0.0.3:30003",)
    assert store.route_tasks(P, (), 2)
    assert list(tasks.iterdir()) == []
    assert store.routed_tasks(P) == ()
    assert store.versions(P) == []  # not a release


def test_a_build_refused_at_staging_keeps_its_log(tmp_path: Path) -> None:
    """A build that ran but whose output is refused (a symlink that leaves it) makes no
    release: its log is kept where `reconciler logs --log build` reads a failed build's."""
    store = ReleaseStore(tmp_path / "production")
    source = make_source(tmp_path / "src", "hi")
    (source / "dist" / "leak").symlink_to("/etc/passwd")
    staging = store.begin(P)
    (staging.logs / "build.log").write_text("build 1\n")
    with pytest.raises(ReleaseError, match="leaves dist/"):
        store.commit(staging, dist=source / "dist", keep_failed_log=True)
    assert store.failed_build_log(P).read_text() == "build 1\n"
    assert [p.name for p in store.project_dir(P).iterdir()] == ["logs"], "nothing staged left"
