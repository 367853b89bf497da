"""Figure 6, the release store: dist hash throughput as a ratio to plain ``hashlib.sha256``
over the same bytes, and staging a 10,000-file dist (copy + hash + sync + rename), first into
an empty project and then with one file changed (the rest hard-linked from the release before).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import summary
from reconciler.core.spec import ProjectId
from reconciler.stores.releases import ReleaseStore, hash_dist


def _tree(root: Path, files: int, size: int) -> int:
    for i in range(files):
        path = root / f"d{i % 100:02d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return files * size


def _plain(root: Path) -> None:
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    sha.update(chunk)


def _times(fn: Any, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def run(root: Path, *, runs: int = 5, small: int = 10_000, large: int = 64) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, files, size in (("large_files", large, 4 << 20), ("small_files", small, 2048)):
        dist = root / label / "dist"
        dist.mkdir(parents=True)
        total = _tree(dist, files, size)
        hash_dist(dist)  # warm the page cache for both
        ours = min(_times(lambda d=dist: hash_dist(d), runs))
        plain = min(_times(lambda d=dist: _plain(d), runs))
        results[f"hash_{label}"] = {
            "files": files,
            "mb": round(total / 1e6, 1),
            "ours_mb_s": round(total / ours / 1e6, 1),
            "plain_mb_s": round(total / plain / 1e6, 1),
            "ratio": round(plain / ours, 2),
        }
    dist = root / "small_files" / "dist"
    fresh, linked = [], []
    for i in range(runs):
        store = ReleaseStore(root / f"production-{i}")
        project = ProjectId("bench")
        (dist / "d00" / "f00000.bin").write_bytes(os.urandom(2048))
        start = time.perf_counter()
        first = store.commit(store.begin(project), dist=dist, generation=1)
        fresh.append(time.perf_counter() - start)
        store.switch(project, first.hash)
        (dist / "d00" / "f00000.bin").write_bytes(os.urandom(2048))
        start = time.perf_counter()
        store.commit(store.begin(project), dist=dist, generation=2)
        linked.append(time.perf_counter() - start)
    results["stage_10000_files"] = {
        "files": small,
        "into_empty_project": summary(fresh, "s"),
        "one_file_changed": summary(linked, "s"),
    }
    return results
