"""Release store figures: dist hash throughput vs plain hashlib, and staging a 10,000-file dist.

Run: .venv/bin/python benchmarks/bench_releases.py
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from reconciler.releases import ReleaseStore, hash_dist
from reconciler.spec import ProjectId


def make_tree(root: Path, files: int, size: int) -> int:
    total = 0
    for i in range(files):
        path = root / f"d{i % 100:02d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        path.write_bytes(data)
        total += size
    return total


def plain_sha(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            sha.update(path.read_bytes())
    return sha.hexdigest()


def best(fn, runs: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for label, files, size in (
            ("large files", 64, 4 << 20),
            ("10,000 small files", 10_000, 2048),
        ):
            dist = root / label.replace(" ", "_").replace(",", "") / "dist"
            dist.mkdir(parents=True)
            total = make_tree(dist, files, size)
            ours = best(lambda d=dist: hash_dist(d))
            plain = best(lambda d=dist: plain_sha(d))
            print(
                f"hash {label}: {total / ours / 1e6:8.1f} MB/s  "
                f"(plain hashlib over the same bytes {total / plain / 1e6:8.1f} MB/s, "
                f"ratio {plain / ours:.2f})"
            )
        dist = root / "10000_small_files" / "dist"
        store = ReleaseStore(root / "production")
        samples = []
        for i in range(3):
            (dist / "d00" / "f00000.bin").write_bytes(os.urandom(2048))  # new content each run
            start = time.perf_counter()
            staging = store.begin(ProjectId("bench"))
            store.commit(staging, dist=dist, generation=i)
            samples.append(time.perf_counter() - start)
        print(
            f"stage a 10,000-file dist (copy + hash + fsync + rename): "
            f"median {statistics.median(samples):.2f} s over {len(samples)} runs"
        )


if __name__ == "__main__":
    main()
