"""The stores under concurrent and crashing writers: several processes at once, SIGKILLs mid-write,
readers racing a switch. Slow (a minute in all): kept out of the unit suite, run by `make test`."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from reconciler.stores.desired import parse
from reconciler.stores.releases import ReleaseStore, hash_dist
from reconciler.stores.state import StateDB
from tests.conftest import PYTHON, REPO, write
from tests.unit.test_desired import COMMENTED
from tests.unit.test_releases import P, make_source, stage

pytestmark = pytest.mark.slow


WRITER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from reconciler.stores.state import StateDB
    db = StateDB(Path({db!r}))
    name, deadline, seq = sys.argv[1], time.monotonic() + float(sys.argv[2]), 0
    while time.monotonic() < deadline:
        job = db.create_job("site", "production.build", generation=seq)
        db.append_event("site", "production.building", {{"writer": name, "seq": seq}})
        db.finish_job(job, "succeeded")
        if seq % 50 == 0:
            db.prune(events_per_project=1_000_000, jobs_per_project=100)
        seq += 1
    print(seq)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_write_concurrently_without_lock_errors(tmp_path: Path) -> None:
    seconds = float(os.environ.get("RECONCILER_SOAK_SECONDS", "15"))  # make soak: 300
    path = tmp_path / "state.db"
    StateDB(path).close()
    script = WRITER.format(repo=str(REPO), db=str(path))
    writers = [
        subprocess.Popen(
            [PYTHON, "-c", script, name, str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    reader_db = StateDB(path)
    seen: list[tuple[int, str, int]] = []
    errors: list[str] = []
    done = threading.Event()

    def follow() -> None:
        last = 0
        while True:
            finished = done.is_set()
            for event in reader_db.events_after("site", last):
                if event.id <= last:
                    errors.append(f"id {event.id} after {last}")
                last = event.id
                data = json.loads(event.data)
                seen.append((event.id, data["writer"], data["seq"]))
            if finished:
                return
            time.sleep(0.001)

    thread = threading.Thread(target=follow)
    thread.start()
    outputs = [w.communicate(timeout=seconds + 60) for w in writers]
    done.set()
    thread.join()
    reader_db.close()
    for writer, (_out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
        assert "locked" not in err
    counts = {name: int(out) for name, (out, _) in zip("ab", outputs, strict=True)}
    assert errors == []
    for name, count in counts.items():
        assert [s for _, w, s in seen if w == name] == list(range(count)), "gap or duplicate"
    assert sum(counts.values()) > 200


CRASH_CHILD = textwrap.dedent(
    """
    import os, sys, random
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from reconciler.stores.releases import ReleaseStore
    store = ReleaseStore(Path({root!r}))
    src = Path({src!r})
    rng = random.Random(os.getpid())
    print("go", flush=True)
    for n in range(1000):
        dist = src / "dist"
        for i in range(20):
            (dist / f"f{{i}}.txt").write_text(f"{{os.getpid()}}-{{n}}-{{i}}" * rng.randint(1, 50))
        staging = store.begin("site")
        release = store.commit(staging, dist=dist, generation=n)
        store.switch("site", release.hash)
        print(n, flush=True)
    """
)


def _check_store(store: ReleaseStore) -> None:
    project = store.project_dir(P)
    current = store.current(P)
    assert current is not None, "current is absent or points at an incomplete release"
    for entry in project.iterdir():
        if entry.name.startswith(".") or entry.name in ("current", "activations.json"):
            continue
        manifest = json.loads((entry / "manifest.json").read_text())
        assert manifest["hash"] == entry.name
        assert hash_dist(entry / "dist") == manifest["digest"], f"partial release {entry.name}"


@pytest.mark.slow
def test_sigkill_during_stage_and_switch_never_leaves_partial_state(tmp_path: Path) -> None:
    root = tmp_path / "production"
    src = tmp_path / "src"
    (src / "dist").mkdir(parents=True)
    script = CRASH_CHILD.format(repo=str(REPO), root=str(root), src=str(src))
    store = ReleaseStore(root)
    rng = random.Random(1234)
    completed = 0
    for _ in range(100):
        child = subprocess.Popen([PYTHON, "-c", script], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline() == "go\n"
        if store.current(P) is None:
            assert child.stdout.readline() == "0\n"
        time.sleep(rng.uniform(0.0, 0.05))
        child.send_signal(signal.SIGKILL)
        child.wait()
        completed += len(child.stdout.read().split())
        child.stdout.close()
        _check_store(store)
        store.cleanup()
        store.prune(P, keep=3)
        _check_store(store)
    assert completed > 20, "the kills did not land during staging and switching"


def test_switch_is_atomic_for_readers(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "production")
    a = stage(store, make_source(tmp_path / "a", "A" * 50_000))
    b = stage(store, make_source(tmp_path / "b", "B" * 50_000))
    store.switch(P, a.hash)
    index = store.project_dir(P) / "current" / "dist" / "index.html"
    stop = threading.Event()
    errors: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                with open(index) as fh:
                    data = fh.read()
            except OSError as exc:
                errors.append(repr(exc))
                continue
            reads[0] += 1
            if data not in ("A" * 50_000, "B" * 50_000):
                errors.append("mixed content")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1000):
            store.switch(P, (a if i % 2 else b).hash)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert reads[0] > 0


def test_fifty_processes_bump_generation_without_lost_updates(tmp_path: Path) -> None:
    desired = tmp_path / "desired"
    path = write(desired / "www.yaml", COMMENTED)
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from reconciler.stores.desired import DesiredStore
        go = Path({str(tmp_path / "go")!r})
        while not go.exists():
            time.sleep(0.001)
        DesiredStore(Path({str(desired)!r})).edit(
            "www", lambda s: {{"production.generation": s.production.generation + 1}}
        )
        """
    )
    procs = [subprocess.Popen([PYTHON, "-c", script]) for _ in range(50)]
    (tmp_path / "go").touch()
    codes = [p.wait(timeout=60) for p in procs]
    assert codes == [0] * 50
    text = path.read_text()
    assert parse(path, text.encode()).production.generation == 53
    assert text == COMMENTED.replace("generation: 3 ", "generation: 53 ")


ALLOCATOR = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from reconciler.core.config import PortRange
    from reconciler.stores.ports import PortAllocator
    from reconciler.stores.state import StateDB
    ports = PortAllocator(StateDB(Path({db!r})), PortRange({first}, {last}))
    go = Path({go!r})
    while not go.exists():
        time.sleep(0.001)
    print(" ".join(str(ports.allocate("p" + sys.argv[1])) for _ in range(50)))
    """
)


@pytest.mark.timeout(120)
def test_eight_processes_never_share_a_port(tmp_path: Path) -> None:
    first = 42000
    db = tmp_path / "state.db"
    StateDB(db).close()
    script = ALLOCATOR.format(
        repo=str(REPO), db=str(db), first=first, last=first + 999, go=str(tmp_path / "go")
    )
    procs = [
        subprocess.Popen([PYTHON, "-c", script, str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    (tmp_path / "go").touch()
    got: list[int] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=100)
        assert proc.returncode == 0
        got.extend(int(p) for p in out.split())
    assert len(got) == 400
    assert len(set(got)) == 400
