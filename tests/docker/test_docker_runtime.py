from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import docker
import httpx
import pytest

from reconciler.core.errors import BuildFailed, Cancelled, StartFailed, TransientError
from reconciler.core.spec import Limits, ProjectId, ProjectSpec
from reconciler.runtimes.base import BuildRequest, wait_ready
from reconciler.runtimes.docker import DockerRuntime, container_name, containers
from reconciler.stores.releases import Release, ReleaseStore
from tests.conftest import free_port
from tests.docker.conftest import make_project
from tests.integration.harness import wait_for

pytestmark = pytest.mark.docker
P = ProjectId("dsite")


def build_release(
    runtime: DockerRuntime,
    store: ReleaseStore,
    source: Path,
    s: ProjectSpec,
    lines: list[str] | None = None,
    cancel: threading.Event | None = None,
) -> Release:
    staging = store.begin(P)
    work = store.project_dir(P) / f".staging-work-{time.monotonic_ns()}"
    req = BuildRequest(
        P,
        s,
        source,
        staging.logs,
        work,
        cancel or threading.Event(),
        (lines if lines is not None else []).append,
    )
    try:
        result = runtime.build(req)
        release = store.commit(staging, dist=result.dist, details=result.details)
        runtime.finish_build(result, release)
        return release
    finally:
        store.abort(staging)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def spec(**values: object) -> ProjectSpec:
    return ProjectSpec.model_validate(
        {"source": "src", "runtime": "docker", "health": {"timeout": 30}, **values}
    )


def test_build_start_health_adopt_stop_prune(
    tmp_path: Path, docker_runtime: DockerRuntime, docker_client: docker.DockerClient, prefix: str
) -> None:
    store = ReleaseStore(tmp_path / "production")
    source = make_project(tmp_path / "src")
    lines: list[str] = []
    release = build_release(docker_runtime, store, source, spec(), lines)
    assert any("Step 1/" in line for line in lines)
    assert (release.dist / "index.html").read_text() == "hello from docker"
    assert (release.logs / "build.log").read_text().count("Step ") >= 4
    # (a build cache hit shares the image with an earlier, killed run: count our tags only)
    tags = [t for t in docker_client.images.get(f"{prefix}-dsite:{release.hash}").tags
            if t.startswith(f"{prefix}-")]  # fmt: skip
    assert tags == [f"{prefix}-dsite:{release.hash}"], "the temporary build tag is gone"

    port = free_port()
    inst = docker_runtime.start(release, spec(), port=port, config="c0ffee00")
    wait_ready(
        f"http://127.0.0.1:{port}/",
        spec().health,
        alive=lambda: docker_runtime.alive(inst),
        why_dead=lambda: docker_runtime.describe_exit(inst),
    )
    assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello from docker"
    container = docker_client.containers.get(container_name("dsite", release.hash, "c0ffee00"))
    assert container.labels["reconciler.project"] == "dsite"
    assert container.labels["com.docker.compose.project"] == f"doce_prod_dsite_{release.hash}"
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    compose = (release.path / "docker-compose.production.yml").read_text()
    assert f"127.0.0.1:{port}:8080" in compose and f"{prefix}-dsite:{release.hash}" in compose

    fresh = DockerRuntime(image_prefix=prefix)
    adopted = fresh.observe(P)
    assert [(i.hash, i.port, i.container_id) for i in adopted] == [
        (release.hash, port, container.id)
    ]
    fresh.stop(adopted[0], timeout=2)
    assert fresh.observe(P) == []
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container.id)

    fresh.remove_version(P, release.hash)
    fresh.close()
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(f"{prefix}-dsite:{release.hash}")


def test_port_conflict_leaves_no_container(
    tmp_path: Path, docker_runtime: DockerRuntime, docker_client: docker.DockerClient
) -> None:
    store = ReleaseStore(tmp_path / "production")
    release = build_release(docker_runtime, store, make_project(tmp_path / "src"), spec())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(TransientError, match=f"Port {port} is already in use"):
            docker_runtime.start(release, spec(), port=port, config="c0ffee00")
    assert (
        docker_client.containers.list(
            all=True, filters={"name": container_name("dsite", release.hash, "c0ffee00")}
        )
        == []
    )


def test_foreign_container_is_never_touched(
    tmp_path: Path, docker_runtime: DockerRuntime, docker_client: docker.DockerClient, prefix: str
) -> None:
    store = ReleaseStore(tmp_path / "production")
    release = build_release(docker_runtime, store, make_project(tmp_path / "src"), spec())
    name = container_name("dsite", release.hash, "c0ffee00")
    foreign = docker_client.containers.create(
        f"{prefix}-dsite:{release.hash}", name=name, labels={"reconciler.project": "dsite"}
    )
    try:
        assert docker_runtime.observe(P) == []
        with pytest.raises(StartFailed, match="not managed by reconciler"):
            docker_runtime.start(release, spec(), port=free_port(), config="c0ffee00")
        foreign.reload()
        assert foreign.status == "created"
    finally:
        foreign.remove(force=True)


def test_dead_container_is_reported_and_described(
    tmp_path: Path, docker_runtime: DockerRuntime
) -> None:
    store = ReleaseStore(tmp_path / "production")
    source = make_project(
        tmp_path / "src",
        dockerfile='FROM scratch\nCOPY busybox /bin/busybox\nCOPY site /app/dist\nENTRYPOINT ["/bin/busybox", "sh", "-c", "echo boom >&2; exit 7"]\n',
    )
    release = build_release(docker_runtime, store, source, spec())
    stop = threading.Event()
    seen: list[object] = []
    docker_runtime.watch(seen.append, stop)
    try:
        wait_for(lambda: None in seen, 10, "the event stream to start")
        inst = docker_runtime.start(release, spec(), port=free_port(), config="c0ffee00")
        with pytest.raises(StartFailed) as info:
            wait_ready(
                f"http://127.0.0.1:{inst.port}/",
                spec().health,
                alive=lambda: docker_runtime.alive(inst),
                why_dead=lambda: docker_runtime.describe_exit(inst),
            )
        message = str(info.value)
        assert "exited with code 7" in message or "Docker restarted it" in message
        assert "boom" in message
        wait_for(lambda: P in seen, 10, "the die event to be reported")
        docker_runtime.stop(inst)
    finally:
        stop.set()
        time.sleep(0.2)


def test_failed_build_is_actionable(tmp_path: Path, docker_runtime: DockerRuntime) -> None:
    store = ReleaseStore(tmp_path / "production")
    source = make_project(
        tmp_path / "src",
        dockerfile='FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "sh", "-c", "echo compiling; exit 3"]\n',
    )
    with pytest.raises(BuildFailed) as info:
        build_release(docker_runtime, store, source, spec())
    assert "returned a non-zero code: 3" in str(info.value)
    assert "compiling" in str(info.value)


def test_missing_output_and_escaping_links_are_refused(
    tmp_path: Path, docker_runtime: DockerRuntime
) -> None:
    store = ReleaseStore(tmp_path / "production")
    source = make_project(tmp_path / "src")
    with pytest.raises(BuildFailed, match="/srv/out does not exist in the built image"):
        build_release(docker_runtime, store, source, spec(build={"output": "/srv/out"}))
    evil = make_project(
        tmp_path / "evil",
        dockerfile='FROM scratch\nCOPY busybox /bin/busybox\nCOPY site /app/dist\nRUN ["/bin/busybox", "ln", "-s", "/etc/passwd", "/app/dist/evil"]\n',
    )
    with pytest.raises(BuildFailed, match="refusing /app/dist from the image"):
        build_release(docker_runtime, store, evil, spec())
    with pytest.raises(BuildFailed, match="absolute path in the image"):
        build_release(docker_runtime, store, source, spec(build={"output": "dist"}))


def test_cancelled_build_stops_within_a_second(
    tmp_path: Path, docker_runtime: DockerRuntime, docker_client: docker.DockerClient
) -> None:
    store = ReleaseStore(tmp_path / "production")
    source = make_project(
        tmp_path / "src",
        dockerfile='FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "sh", "-c", "echo sleeping; /bin/busybox sleep 600"]\n',
    )
    cancel = threading.Event()
    lines: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            build_release(docker_runtime, store, source, spec(), lines, cancel)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: "sleeping" in lines, 30, "the build's RUN step")
    started = time.monotonic()
    cancel.set()
    thread.join(10)
    assert time.monotonic() - started < 1.0
    assert isinstance(errors[0], Cancelled)
    wait_for(
        lambda: (
            not [
                c
                for c in docker_client.containers.list()
                if "sleep 600" in " ".join(c.attrs["Config"].get("Cmd") or [])
            ]
        ),
        10,
        "the build's RUN container to stop after the cancel",
    )


def test_unreachable_engine_is_transient(tmp_path: Path) -> None:
    runtime = DockerRuntime(base_url=f"unix://{tmp_path}/no.sock")
    assert not runtime.ping()
    with pytest.raises(TransientError, match="Docker engine unreachable"):
        runtime.observe(P)
    runtime.close()


def test_a_stopped_or_never_started_container_of_ours_is_removed_on_observe(
    tmp_path: Path,
    docker_runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon killed between stopping a container and removing it (or between creating
    and starting one) leaves it behind; an observation once it is older than a start's
    steps removes it (a younger one may be a start under way's: it is left alone)."""
    store = ReleaseStore(tmp_path / "production")
    release = build_release(docker_runtime, store, make_project(tmp_path / "src"), spec())
    inst = docker_runtime.start(release, spec(), port=free_port(), config="c0ffee00")
    name = container_name("dsite", release.hash, "c0ffee00")
    docker_client.containers.get(name).stop(timeout=1)
    assert docker_client.containers.get(name).status == "exited"
    assert docker_runtime.observe(P) == []
    assert docker_client.containers.get(name).status == "exited", "just ended: left alone"
    monkeypatch.setattr(containers, "LEFTOVER_AGE", 0.0)  # as if 10 s had gone by
    assert docker_runtime.observe(P) == []
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(name)
    assert inst.container_id is not None


def test_containers_are_confined_and_limited(
    tmp_path: Path, docker_client: docker.DockerClient, prefix: str
) -> None:
    """Read-only root (a small /tmp, and a volume per declared writable path that outlives
    versions), no new privileges, no capabilities, and the limits; one that uses more memory
    than its limit is killed by the kernel and says so."""
    runtime = DockerRuntime(image_prefix=prefix, limits=Limits.parse("memory=64M,pids=64"))
    store = ReleaseStore(tmp_path / "production")
    writes = (
        "echo ok > /data/x && touch /tmp/y && if touch /app/z 2>/dev/null; then echo bad > "
        "/app/dist/index.html; fi; cat /data/x > /app/dist/index.html 2>/dev/null; "
        "exec /bin/busybox httpd -f -p 8080 -h /data"
    )
    source = make_project(
        tmp_path / "src",
        dockerfile="FROM scratch\nCOPY busybox /bin/busybox\nCOPY site /app/dist\nEXPOSE 8080\n"
        f'ENTRYPOINT ["/bin/busybox", "sh", "-c", "{writes}"]\n',
    )
    s = spec(start={"writable": ["/data"]}, limits={"cpu": 0.5})
    release = build_release(runtime, store, source, s)
    port = free_port()
    inst = runtime.start(release, s, port=port, config="c0ffee00")
    volume = f"reconciler-dsite-{__import__('hashlib').sha256(b'/data').hexdigest()[:8]}"
    try:
        wait_ready(
            f"http://127.0.0.1:{port}/x",
            s.health,
            alive=lambda: runtime.alive(inst),
            why_dead=lambda: runtime.describe_exit(inst),
        )
        assert httpx.get(f"http://127.0.0.1:{port}/x").text == "ok\n"  # the writable volume
        host = docker_client.containers.get(inst.container_id).attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Memory"] == 64 << 20 and host["MemorySwap"] == 64 << 20
        assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 64
        assert host["NetworkMode"] != "host"
        assert docker_client.volumes.get(volume).attrs["Labels"]["reconciler.project"] == "dsite"
        runtime.stop(inst, timeout=1)

        # over its memory limit: killed, and reported as such
        hog = make_project(
            tmp_path / "hog",
            dockerfile="FROM scratch\nCOPY busybox /bin/busybox\nCOPY site /app/dist\n"
            'ENTRYPOINT ["/bin/busybox", "sh", "-c", '
            '"x=$(/bin/busybox head -c 200000000 /dev/zero | /bin/busybox tr \\"\\\\\\\\0\\" a); sleep 60"]\n',
        )
        release = build_release(runtime, store, hog, spec())
        stop = threading.Event()
        runtime.watch(lambda _project: None, stop)
        try:
            inst = runtime.start(release, spec(), port=free_port(), config="c0ffee00")
            deadline = time.monotonic() + 30
            told: list[str] = []
            while not told and time.monotonic() < deadline:
                told = runtime.exits(P)
                time.sleep(0.1)
        finally:
            stop.set()
        assert told and "killed for using more memory than its limit" in told[0], told
    finally:
        runtime.stop(inst, timeout=1)
        runtime.close()
        docker_client.volumes.get(volume).remove(force=True)


def test_an_app_listening_on_another_port_than_start_port_is_told_so(
    tmp_path: Path, docker_runtime: DockerRuntime
) -> None:
    """The image listens on 8080; the desired file says start.port: 3000. The start fails
    within seconds naming both, not after the health timeout with a disconnect."""
    store = ReleaseStore(tmp_path / "production")
    source = make_project(tmp_path / "src")
    wrong = spec(start={"port": 3000}, health={"timeout": 120})
    release = build_release(docker_runtime, store, source, wrong)
    port = free_port()
    inst = docker_runtime.start(release, wrong, port=port, config="c0ffee00")
    started = time.monotonic()
    try:
        with pytest.raises(StartFailed) as info:
            wait_ready(
                f"http://127.0.0.1:{port}/",
                wrong.health,
                alive=lambda: docker_runtime.alive(inst),
                why_dead=lambda: docker_runtime.describe_exit(inst),
                wrong_port=lambda: docker_runtime.wrong_port(inst),
            )
    finally:
        docker_runtime.stop(inst, timeout=2)
    message = str(info.value)
    assert "the app listens on port 8080 in its container, not on 3000 (start.port" in message
    assert "set start.port: 8080" in message
    assert time.monotonic() - started < 30, "not the 120 s timeout"
