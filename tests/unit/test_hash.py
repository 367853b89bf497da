from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.errors import ReleaseError
from reconciler.stores.releases import Limits, hash_dist

names = st.text(alphabet="abcdefgh._-", min_size=1, max_size=6).filter(
    lambda n: n not in (".", "..")
)
trees = st.dictionaries(
    st.lists(names, min_size=1, max_size=3).map(tuple),
    st.tuples(st.binary(max_size=64), st.booleans()),
    min_size=1,
    max_size=8,
).filter(_ok := lambda t: all(a[: len(b)] != b for a in t for b in t if a != b))

HYP = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def build(root: Path, tree: dict[tuple[str, ...], tuple[bytes, bool]], order: list[int]) -> Path:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    items = list(tree.items())
    for index in order:
        parts, (data, executable) = items[index]
        path = root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if executable else 0o644)
    return root


@HYP
@given(tree=trees, seed=st.randoms(use_true_random=False))
def test_same_tree_same_hash_regardless_of_order_and_mtime(tmp_path: Path, tree, seed) -> None:  # type: ignore[no-untyped-def]
    order = list(range(len(tree)))
    a = hash_dist(build(tmp_path / "a", tree, order))
    seed.shuffle(order)
    b_root = build(tmp_path / "b", tree, order)
    for path in b_root.rglob("*"):
        os.utime(path, (seed.randint(0, 2**31), seed.randint(0, 2**31)))
    assert hash_dist(b_root) == a
    assert len(a) == 64


@HYP
@given(tree=trees, which=st.integers(min_value=0))
def test_rename_changes_hash(tmp_path: Path, tree, which) -> None:  # type: ignore[no-untyped-def]
    root = build(tmp_path / "t", tree, list(range(len(tree))))
    before = hash_dist(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    victim = files[which % len(files)]
    victim.rename(victim.with_name(victim.name + "z"))
    assert hash_dist(root) != before


@HYP
@given(tree=trees, which=st.integers(min_value=0))
def test_exec_bit_changes_hash(tmp_path: Path, tree, which) -> None:  # type: ignore[no-untyped-def]
    root = build(tmp_path / "t", tree, list(range(len(tree))))
    before = hash_dist(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    victim = files[which % len(files)]
    victim.chmod(victim.stat().st_mode ^ 0o100)
    assert hash_dist(root) != before


@HYP
@given(a=st.binary(min_size=1, max_size=40), b=st.binary(max_size=40), k=st.integers(1, 40))
def test_moving_bytes_between_files_changes_hash(
    tmp_path: Path, a: bytes, b: bytes, k: int
) -> None:
    k = min(k, len(a))
    root = tmp_path / "m"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    (root / "1").write_bytes(a)
    (root / "2").write_bytes(b)
    before = hash_dist(root)
    (root / "1").write_bytes(a[:-k])
    (root / "2").write_bytes(a[-k:] + b)
    assert hash_dist(root) != before


def test_empty_dir_and_symlink_count(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "index.html").write_text("hi")
    base = hash_dist(root)
    (root / "empty").mkdir()
    with_dir = hash_dist(root)
    assert with_dir != base
    os.symlink("index.html", root / "alias.html")
    with_link = hash_dist(root)
    assert with_link != with_dir
    (root / "alias.html").unlink()
    os.symlink("empty/../index.html", root / "alias.html")
    assert hash_dist(root) != with_link  # target text, not the file it names


def test_symlink_to_outside_fifo_fails_without_opening_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.fifo"
    os.mkfifo(outside)
    root = tmp_path / "dist"
    root.mkdir()
    (root / "index.html").write_text("x")
    os.symlink(outside, root / "secret")
    result: list[BaseException | str] = []

    def work() -> None:
        try:
            result.append(hash_dist(root))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "hashing blocked: it opened the fifo"
    assert isinstance(result[0], ReleaseError)
    assert "symlink dist/secret" in str(result[0]) and "leaves dist/" in str(result[0])


@pytest.mark.parametrize(
    "target",
    ["../outside.txt", "/etc/passwd", "sub/../../outside.txt", "loop/../../outside.txt"],
)
def test_symlinks_leaving_dist_fail(tmp_path: Path, target: str) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    root = tmp_path / "dist"
    (root / "sub").mkdir(parents=True)
    os.symlink(".", root / "loop")
    os.symlink(target, root / "link")
    with pytest.raises(ReleaseError, match="leaves dist/"):
        hash_dist(root)


def test_fifo_inside_dist_fails_without_blocking(tmp_path: Path) -> None:
    root = tmp_path / "dist"
    root.mkdir()
    os.mkfifo(root / "pipe")
    with pytest.raises(ReleaseError, match="dist/pipe is a fifo"):
        hash_dist(root)


def test_limits(tmp_path: Path) -> None:
    root = tmp_path / "dist"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}").write_bytes(b"x" * 100)
    with pytest.raises(ReleaseError, match="more than 3 entries"):
        hash_dist(root, Limits(max_files=3))
    with pytest.raises(ReleaseError, match="larger than 250 bytes"):
        hash_dist(root, Limits(max_bytes=250))


def test_missing_dist_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="is not a directory"):
        hash_dist(tmp_path / "nope")


def test_a_refused_link_is_the_one_that_leaves_with_what_to_do(tmp_path: Path) -> None:
    """A virtualenv's bin/python -> python3 -> /usr/bin/python3: the refusal names the link
    that leaves (not the relative one leading to it), where it points, and the way out."""
    root = tmp_path / "dist"
    (root / ".venv" / "bin").mkdir(parents=True)
    os.symlink("/usr/bin/python3", root / ".venv" / "bin" / "python3")
    os.symlink("python3", root / ".venv" / "bin" / "python")
    with pytest.raises(ReleaseError) as info:
        hash_dist(root)
    assert str(info.value) == (
        "symlink dist/.venv/bin/python3 -> /usr/bin/python3 leaves dist/ (dist/.venv/bin/python "
        "leads to it); refusing to follow it: a virtualenv links to the interpreter it was made "
        "with; make it with 'python3 -m venv --copies', or outside build.output"
    )
