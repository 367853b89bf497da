from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from reconciler.core.errors import BuildFailed, Cancelled, StartFailed, TransientError
from reconciler.core.spec import Health, ProjectId, ProjectSpec
from reconciler.runtimes.base import BuildRequest, Clock, wait_ready
from reconciler.runtimes.process.runtime import ProcessRuntime, pid_alive, process_start_time
from reconciler.stores.releases import Release, ReleaseStore
from tests.conftest import PYTHON, REPO, free_port
from tests.integration.harness import wait_for

P = ProjectId("site")


def spec(**values: object) -> ProjectSpec:
    return ProjectSpec.model_validate({"source": "src", **values})


def request(
    tmp_path: Path,
    s: ProjectSpec,
    lines: list[str] | None = None,
    cancel: threading.Event | None = None,
) -> BuildRequest:
    sink = lines.append if lines is not None else (lambda _l: None)
    return BuildRequest(
        P,
        s,
        tmp_path / "src",
        tmp_path / "logs",
        tmp_path / "work",
        cancel or threading.Event(),
        sink,
    )


@pytest.fixture
def store(tmp_path: Path) -> ReleaseStore:
    return ReleaseStore(tmp_path / "production")


@pytest.fixture
def runtime(store: ReleaseStore) -> ProcessRuntime:
    return ProcessRuntime(store)


def stage(store: ReleaseStore, tmp_path: Path, html: str = "hello") -> Release:
    dist = tmp_path / f"dist-{html}"
    dist.mkdir()
    (dist / "index.html").write_text(html)
    return store.commit(store.begin(P), dist=dist)


def test_build_streams_lines_and_logs(tmp_path: Path, runtime: ProcessRuntime) -> None:
    (tmp_path / "src").mkdir()
    s = spec(
        build={
            "command": "echo one; echo two >&2; mkdir -p dist; echo $GREETING > dist/index.html"
        },
        env={"GREETING": "hi"},
    )
    lines: list[str] = []
    result = runtime.build(request(tmp_path, s, lines))
    assert result.dist == tmp_path / "src" / "dist"
    assert (result.dist / "index.html").read_text() == "hi\n"
    assert lines[1:] == ["one", "two"]
    assert (tmp_path / "logs" / "build.log").read_text().splitlines()[1:] == ["one", "two"]


def test_build_failure_is_actionable(tmp_path: Path, runtime: ProcessRuntime) -> None:
    (tmp_path / "src").mkdir()
    s = spec(build={"command": "echo installing; echo 'npm ERR! missing script' ; exit 3"})
    with pytest.raises(BuildFailed) as info:
        runtime.build(request(tmp_path, s))
    message = str(info.value)
    assert message.startswith(
        "Build failed: echo installing; echo 'npm ERR! missing script' ; exit 3 exited with code 3"
    )
    assert message.endswith("installing\nnpm ERR! missing script")


def test_build_without_command_uses_dist(tmp_path: Path, runtime: ProcessRuntime) -> None:
    (tmp_path / "src" / "dist").mkdir(parents=True)
    assert runtime.build(request(tmp_path, spec())).dist == tmp_path / "src" / "dist"
    (tmp_path / "src" / "dist").rmdir()
    with pytest.raises(
        BuildFailed, match=r"the source has no dist/ \(build.output: dist\)"
    ) as info:
        runtime.build(request(tmp_path, spec()))
    assert str(tmp_path) not in str(info.value), "no internal path: the file's own words"
    (tmp_path / "src" / "sub").mkdir()
    built = spec(build={"command": "true", "output": "out"})
    with pytest.raises(BuildFailed, match=r"produced no out/ \(build.output: out\)") as info:
        runtime.build(request(tmp_path, built))
    assert str(tmp_path) not in str(info.value)


@pytest.mark.parametrize("output", ["../x", "/abs", "a/../../b"])
def test_build_output_must_stay_in_source(
    tmp_path: Path, runtime: ProcessRuntime, output: str
) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(BuildFailed, match="must be a relative path"):
        runtime.build(request(tmp_path, spec(build={"output": output})))


def test_build_timeout(tmp_path: Path, runtime: ProcessRuntime) -> None:
    (tmp_path / "src").mkdir()
    s = spec(build={"command": "echo waiting; sleep 30", "timeout": 0.5})
    start = time.monotonic()
    with pytest.raises(BuildFailed, match=r"timed out after 0\.5 seconds"):
        runtime.build(request(tmp_path, s))
    assert time.monotonic() - start < 3


def test_cancelled_build_dies_within_a_second_with_its_children(
    tmp_path: Path, runtime: ProcessRuntime
) -> None:
    (tmp_path / "src").mkdir()
    s = spec(build={"command": "sleep 600 & echo child $!; sleep 600"})
    cancel = threading.Event()
    lines: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runtime.build(request(tmp_path, s, lines, cancel))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: any(line.startswith("child ") for line in lines), 10, "the build's child")
    child = int(next(line for line in lines if line.startswith("child ")).split()[1])
    assert process_start_time(child) is not None
    cancelled_at = time.monotonic()
    cancel.set()
    thread.join(5)
    elapsed = time.monotonic() - cancelled_at
    assert not thread.is_alive()
    assert isinstance(errors[0], Cancelled)
    assert elapsed < 1.0, f"cancel took {elapsed:.2f}s"
    assert process_start_time(child) is None, "the build's child survived the cancel"


def test_instance_outlives_its_starter_and_is_adopted(tmp_path: Path, store: ReleaseStore) -> None:
    release = stage(store, tmp_path, "adopt me")
    port = free_port()
    helper = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from reconciler.stores.releases import ReleaseStore
        from reconciler.runtimes.process.runtime import ProcessRuntime
        from reconciler.core.spec import ProjectSpec
        store = ReleaseStore(Path({str(store.root)!r}))
        release = store.get("site", {release.hash!r})
        inst = ProcessRuntime(store).start(release, ProjectSpec(source="x"), port={port}, config="c0ffee00")
        print(inst.pid)
        """
    )
    out = subprocess.run(
        [PYTHON, "-c", helper], capture_output=True, text=True, timeout=30, check=True
    )
    pid = int(out.stdout)
    fresh = ProcessRuntime(store)
    wait_ready(f"http://127.0.0.1:{port}/", Health(timeout=10), alive=lambda: True, why_dead=str)
    assert httpx.get(f"http://127.0.0.1:{port}/").text == "adopt me"
    found = fresh.observe(P)
    assert [(i.hash, i.pid, i.port) for i in found] == [(release.hash, pid, port)]
    fresh.stop(found[0], timeout=5)
    assert not pid_alive(found[0].pid, found[0].pid_start)
    assert fresh.observe(P) == []
    assert "starting" in (release.logs / "app.log").read_text()


def test_reused_pid_is_not_adopted(
    tmp_path: Path, store: ReleaseStore, runtime: ProcessRuntime
) -> None:
    release = stage(store, tmp_path)
    record = {
        "pid": os.getpid(),
        "pidStart": process_start_time(os.getpid()) + 1,
        "port": 1,
        "startedAt": "x",
    }  # type: ignore[operator]
    (release.logs / "instance.json").write_text(json.dumps(record))
    assert runtime.observe(P) == []


def test_start_command_gets_port_and_stop_kills_group(
    tmp_path: Path, store: ReleaseStore, runtime: ProcessRuntime
) -> None:
    release = stage(store, tmp_path)
    port = free_port()
    s = spec(
        start={"command": f"sleep 600 & exec {PYTHON} -m http.server $PORT --bind 127.0.0.1"},
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    inst = runtime.start(release, s, port=port, config="c0ffee00")
    wait_ready(
        f"http://127.0.0.1:{port}/",
        Health(timeout=10),
        alive=lambda: runtime.alive(inst),
        why_dead=lambda: runtime.describe_exit(inst),
    )
    group = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == inst.pid]
    assert len(group) == 2
    runtime.stop(inst, timeout=5)
    assert not runtime.alive(inst)
    assert all(_pgid(int(p)) is None for p in group)


def test_an_instance_that_dies_is_reported_at_once_and_a_stop_is_not(
    tmp_path: Path, store: ReleaseStore, runtime: ProcessRuntime
) -> None:
    """The exit watch: a killed instance's project is reported the moment it dies; one the
    runtime stops itself is no news (its liveness checks while stopping do not watch it
    again)."""
    heard: list[ProjectId | None] = []
    stop = threading.Event()
    runtime.watch(heard.append, stop)
    release = stage(store, tmp_path)
    s = spec(start={"command": "exec sleep 600"})
    try:
        killed = runtime.start(release, s, port=free_port(), config="c0ffee01")
        assert runtime.alive(killed)  # watched from now on
        assert killed.pid is not None
        os.kill(killed.pid, 9)
        wait_for(lambda: heard == [killed.project_id], 5, "the exit reported")
        assert not runtime.alive(killed)
        stopped = runtime.start(release, s, port=free_port(), config="c0ffee02")
        assert runtime.alive(stopped)
        runtime.stop(stopped, timeout=5)
        time.sleep(0.5)
        assert heard == [killed.project_id], "a stop of the runtime's own is not reported"
    finally:
        stop.set()
        runtime.close()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid) if process_start_time(pid) is not None else None
    except ProcessLookupError:
        return None


def test_start_that_exits_at_once_fails_fast(
    tmp_path: Path, store: ReleaseStore, runtime: ProcessRuntime
) -> None:
    release = stage(store, tmp_path)
    s = spec(
        start={"command": "echo 'Error: cannot find module server.js' >&2; exit 1"},
        health={"timeout": 120},
    )
    inst = runtime.start(release, s, port=free_port(), config="c0ffee00")
    started = time.monotonic()
    with pytest.raises(StartFailed) as info:
        wait_ready(
            f"http://127.0.0.1:{inst.port}/",
            s.health,
            alive=lambda: runtime.alive(inst),
            why_dead=lambda: runtime.describe_exit(inst),
        )
    assert time.monotonic() - started < 3
    assert "exited with code 1 before it became ready" in str(info.value)
    assert "cannot find module server.js" in str(info.value)


def test_probe_schedule_backs_off_to_interval_and_times_out() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    clock = Clock(monotonic=lambda: now[0], sleep=sleep)
    port = free_port()  # nothing listens: every probe is refused at once
    with pytest.raises(
        StartFailed,
        match=r"^Health check timeout after 5 minutes: GET http://127\.0\.0\.1:\d+/ never answered 2xx \(last: ConnectError: .*refused\)",
    ):
        wait_ready(
            f"http://127.0.0.1:{port}/",
            Health(timeout=300, interval=2),
            alive=lambda: True,
            why_dead=str,
            clock=clock,
        )
    growing = [round(0.005 * 1.2**n, 6) for n in range(8)]  # 5 ms, growing by a fifth
    assert [round(s, 6) for s in sleeps[:8]] == growing
    # then every 20 ms while the app starts (readiness seen within 20 ms), for 30 s
    startup = [i for i, s in enumerate(sleeps) if s == 0.02]
    assert startup == list(range(8, startup[-1] + 1))
    assert 29.9 < sum(sleeps[: startup[-1] + 1]) < 30.1
    # then slower, up to the health interval, until the timeout
    after = sleeps[startup[-1] + 1 :]
    assert after[0] > 0.02 and after == sorted(after[:-1]) + after[-1:]
    assert max(sleeps) == 2 and set(after[after.index(2) : -1]) == {2}
    assert abs(sum(sleeps) - 300) < 1e-6


def test_probe_counts_only_2xx(
    tmp_path: Path, store: ReleaseStore, runtime: ProcessRuntime
) -> None:
    release = stage(store, tmp_path)
    port = free_port()
    inst = runtime.start(release, spec(), port=port, config="c0ffee00")
    try:
        with pytest.raises(StartFailed, match="last: HTTP 404"):
            wait_ready(
                f"http://127.0.0.1:{port}/nope",
                Health(timeout=1, interval=0.2),
                alive=lambda: True,
                why_dead=str,
            )
        first = time.monotonic()
        wait_ready(
            f"http://127.0.0.1:{port}/",
            Health(timeout=10),
            alive=lambda: runtime.alive(inst),
            why_dead=str,
        )
        assert time.monotonic() - first < 1
    finally:
        runtime.stop(inst)


def test_app_from_its_source_tree_runs_in_dist_with_no_bookkeeping_reachable(
    tmp_path: Path, store: ReleaseStore, runtime: ProcessRuntime
) -> None:
    """``build.output: .``: the source tree (less ``.git``) is the release, and the start
    command runs in the release's ``dist/``: a plain file server shows the app's files and
    none of ``logs/`` or ``manifest.json``."""
    src = tmp_path / "src"
    (src / ".git").mkdir(parents=True)
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (src / "server.py").write_text(
        "import http.server, os\n"
        "http.server.test(http.server.SimpleHTTPRequestHandler, port=int(os.environ['PORT']),"
        " bind='127.0.0.1')\n"
    )
    (src / "index.html").write_text("from source")
    s = spec(build={"output": "."}, start={"command": f"exec {PYTHON} server.py"})
    result = runtime.build(request(tmp_path, s))
    release = store.commit(store.begin(P), dist=result.dist, dist_exclude=result.dist_exclude)
    assert sorted(p.name for p in release.dist.iterdir()) == ["index.html", "server.py"]
    port = free_port()
    inst = runtime.start(release, s, port=port, config="c0ffee00")
    try:
        wait_ready(
            f"http://127.0.0.1:{port}/",
            Health(timeout=10),
            alive=lambda: runtime.alive(inst),
            why_dead=lambda: runtime.describe_exit(inst),
        )
        assert httpx.get(f"http://127.0.0.1:{port}/index.html").text == "from source"
        for leak in ("manifest.json", "logs/app.log", "dist/index.html", ".git/HEAD"):
            assert httpx.get(f"http://127.0.0.1:{port}/{leak}").status_code == 404, leak
        assert "../" not in httpx.get(f"http://127.0.0.1:{port}/").text
    finally:
        runtime.stop(inst, timeout=5)


def test_a_build_output_through_a_symlinked_parent_is_refused(
    tmp_path: Path, runtime: ProcessRuntime
) -> None:
    secret = tmp_path / "outside" / "dist"
    secret.mkdir(parents=True)
    (secret / "secret.txt").write_text("TOP SECRET")
    (tmp_path / "src").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "src" / "out")
    with pytest.raises(BuildFailed, match="outside the source dir"):
        runtime.build(request(tmp_path, spec(build={"output": "out/dist"})))
    # and one a build command makes is refused after the build
    os.unlink(tmp_path / "src" / "out")
    made = spec(build={"command": f"ln -s {tmp_path / 'outside'} out", "output": "out/dist"})
    with pytest.raises(BuildFailed, match="outside the source dir"):
        runtime.build(request(tmp_path, made))


def test_an_executable_still_open_for_writing_is_a_transient_start_failure(
    tmp_path: Path, store: ReleaseStore, runtime: ProcessRuntime
) -> None:
    """ETXTBSY: a process forked by another thread while a release was being written can
    hold one of its files open for writing a moment longer; exec then fails with "Text
    file busy". That passes, so it is a transient failure (tried again), not "Start failed"
    (seen once with 200 process sites started at once, benchmarks/scale.py)."""
    import shutil

    dist = tmp_path / "dist-tool"
    dist.mkdir()
    shutil.copy("/bin/sleep", dist / "tool")
    release = store.commit(store.begin(P), dist=dist)
    tool = release.dist / "tool"
    writer = subprocess.Popen(
        [PYTHON, "-c", f"import time; f = open({str(tool)!r}, 'ab'); print(1, flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == b"1"
        s = spec(start={"command": "exec ./tool 600"})
        inst = runtime.start(release, s, port=free_port(), config="c0ffee00")
        with pytest.raises(TransientError, match="text file busy"):
            wait_ready(
                f"http://127.0.0.1:{inst.port}/",
                Health(timeout=10),
                alive=lambda: runtime.alive(inst),
                why_dead=lambda: runtime.describe_exit(inst),
            )
    finally:
        writer.kill()
        writer.wait(10)
        if writer.stdout is not None:
            writer.stdout.close()
    again = runtime.start(release, s, port=free_port(), config="c0ffee00")  # now it runs
    time.sleep(0.5)
    assert runtime.alive(again)
    runtime.stop(again, timeout=2)


def test_builds_keep_their_package_caches_per_project(
    tmp_path: Path, runtime: ProcessRuntime
) -> None:
    """pip, npm, yarn and pnpm are pointed at the project's own caches, kept from build to
    build (a build with unchanged dependencies downloads nothing again); the desired file's
    env still wins."""
    (tmp_path / "src").mkdir()
    command = (
        'mkdir -p dist && echo "$PIP_CACHE_DIR $npm_config_cache" > dist/caches '
        '&& echo kept >> "$PIP_CACHE_DIR/marker"'
    )
    caches = tmp_path / "cache" / P
    build = dataclasses.replace(request(tmp_path, spec(build={"command": command})),
                                cache_dir=caches)  # fmt: skip
    runtime.build(build)
    assert (tmp_path / "src" / "dist" / "caches").read_text().split() == [
        str(caches / "pip"), str(caches / "npm"),
    ]  # fmt: skip
    runtime.build(build)
    assert (caches / "pip" / "marker").read_text() == "kept\nkept\n", "the same cache again"
    own = spec(build={"command": command}, env={"PIP_CACHE_DIR": str(tmp_path / "mine")})
    (tmp_path / "mine").mkdir()
    runtime.build(dataclasses.replace(request(tmp_path, own), cache_dir=caches))
    assert (tmp_path / "src" / "dist" / "caches").read_text().split()[0] == str(tmp_path / "mine")
