"""A real three-node Docker swarm on one machine: one Docker engine per network namespace
(``rcn1``..``rcn3``, its own hostname, data root, exec root and socket), joined by veth pairs
on a bridge in the root namespace (10.231.0.0/24, the bridge at .1, node n at .1n), all three
managers (losing one keeps the quorum), and a registry run as a swarm service on node 1 from
an image built here (Debian's ``docker-registry``, so every node pulls what the daemon
pushes). Everything made is removed by ``down``, after a failure too: the engines, their
containerd shims and containers, the mounts under their roots, the namespaces, the bridge and
the firewall rule.

The engines run in plain network namespaces entered with ``nsenter --net`` (``ip netns
exec`` remounts /sys, and the engine then finds no devices cgroup), ``--iptables=false``
(they must not rewrite the host's firewall); the host engine's FORWARD policy drops bridged
traffic, so one ACCEPT rule for the bridge goes into ``DOCKER-USER``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker

SUBNET = "10.231.0"
BRIDGE = "rcbr0"
REGISTRY_IMAGE = "reconciler-test-registry:1"
REGISTRY_PORT = 5000
REGISTRY_BINARY = Path("/usr/bin/docker-registry")
RULE = ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]  # in DOCKER-USER, else FORWARD


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@dataclass
class Node:
    index: int
    root: Path

    @property
    def name(self) -> str:
        return f"rcn{self.index}"

    @property
    def addr(self) -> str:
        return f"{SUBNET}.1{self.index}"

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def client(self, timeout: int = 30) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def pids(self) -> list[int]:
        """Every process in the node's network namespace (its engine, shims, containers)."""
        done = run("ip", "netns", "pids", self.name, check=False)
        return [int(p) for p in done.stdout.split()]


@dataclass
class Cluster:
    base: Path
    nodes: list[Node] = field(default_factory=list)
    lost: set[int] = field(default_factory=set)

    @property
    def registry(self) -> str:
        return f"{self.nodes[0].addr}:{REGISTRY_PORT}"

    # -- making it ---------------------------------------------------------------------------

    def up(self, count: int = 3) -> Cluster:
        self.down()  # what a run killed before its clean-up left behind
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        if run("iptables", "-I", "DOCKER-USER", *RULE, check=False).returncode != 0:
            run("iptables", "-I", "FORWARD", *RULE)  # no engine's chain on this host
        for index in range(1, count + 1):
            node = Node(index, self.base / f"n{index}")
            self.nodes.append(node)
            self._network(node)
            self._engine(node)
        for node in self.nodes:
            _wait(lambda node=node: _answers(node), 60, f"the engine of {node.name}")
        self._swarm()
        self._registry()
        return self

    def _network(self, node: Node) -> None:
        peer, inside = f"rcp{node.index}", f"rcv{node.index}"
        run("ip", "netns", "add", node.name)
        run("ip", "link", "add", inside, "type", "veth", "peer", "name", peer)
        run("ip", "link", "set", peer, "master", BRIDGE, "up")
        run("ip", "link", "set", inside, "netns", node.name)
        run("ip", "-n", node.name, "addr", "add", f"{node.addr}/24", "dev", inside)
        run("ip", "-n", node.name, "link", "set", inside, "up")
        run("ip", "-n", node.name, "link", "set", "lo", "up")

    def _engine(self, node: Node) -> None:
        node.root.mkdir(parents=True, exist_ok=True)
        engine = (
            f"hostname {node.name}; exec setsid -f dockerd --data-root {node.root}/data "
            f"--exec-root {node.root}/exec --pidfile {node.root}/dockerd.pid "
            f"-H unix://{node.socket} --iptables=false --insecure-registry {SUBNET}.0/24 "
            f">> {node.root}/dockerd.log 2>&1"
        )
        run("nsenter", f"--net=/var/run/netns/{node.name}", "unshare", "--uts",
            "sh", "-c", engine)  # fmt: skip

    def _swarm(self) -> None:
        first = self.nodes[0].client()
        first.swarm.init(advertise_addr=self.nodes[0].addr, listen_addr="0.0.0.0:2377")
        token = first.swarm.attrs["JoinTokens"]["Manager"]
        for node in self.nodes[1:]:
            client = node.client()
            client.swarm.join(remote_addrs=[f"{self.nodes[0].addr}:2377"], join_token=token,
                              advertise_addr=node.addr, listen_addr="0.0.0.0:2377")  # fmt: skip
            client.close()
        _wait(lambda: len(self.ready()) == len(self.nodes), 60, "every node ready")
        first.close()

    def _registry(self) -> None:
        """A registry service on node 1, from an image of Debian's docker-registry binary."""
        context = self.base / "registry"
        root = context / "rootfs"
        for path in ("bin", "lib/x86_64-linux-gnu", "lib64", "etc", "var/lib/registry"):
            (root / path).mkdir(parents=True, exist_ok=True)
        shutil.copy(REGISTRY_BINARY, root / "bin" / "registry")
        for library in _libraries(REGISTRY_BINARY):
            target = root / library.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(library, target)
        (root / "etc" / "config.yml").write_text(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n"
            f"http:\n  addr: :{REGISTRY_PORT}\n"
        )
        (context / "Dockerfile").write_text(
            f"FROM scratch\nCOPY rootfs/ /\nEXPOSE {REGISTRY_PORT}\n"
            'ENTRYPOINT ["/bin/registry", "serve", "/etc/config.yml"]\n'
        )
        first = self.nodes[0].client(timeout=120)
        first.images.build(path=str(context), tag=REGISTRY_IMAGE, rm=True)
        first.services.create(
            REGISTRY_IMAGE, name="registry", constraints=[f"node.hostname=={self.nodes[0].name}"],
            endpoint_spec=docker.types.EndpointSpec(ports=[
                {"Protocol": "tcp", "PublishedPort": REGISTRY_PORT, "TargetPort": REGISTRY_PORT,
                 "PublishMode": "host"}]),
        )  # fmt: skip
        first.close()
        _wait(self._registry_answers, 60, "the registry answers")

    def _registry_answers(self) -> bool:
        import httpx

        try:
            return httpx.get(f"http://{self.registry}/v2/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    # -- what the tests do to it --------------------------------------------------------------

    def ready(self) -> list[str]:
        """The names of the nodes the swarm sees ready."""
        client = self.manager().client()
        try:
            return sorted(
                n.attrs["Description"]["Hostname"]
                for n in client.nodes.list()
                if n.attrs["Status"]["State"] == "ready"
            )
        finally:
            client.close()

    def manager(self) -> Node:
        return next(n for n in self.nodes if n.index not in self.lost)

    def lose(self, node: Node) -> None:
        """The machine goes away: every process of the node (its engine, shims and
        containers) killed at once, its network link cut."""
        for pid in node.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run("ip", "link", "set", f"rcp{node.index}", "down", check=False)
        self.lost.add(node.index)

    # -- removing it --------------------------------------------------------------------------

    def down(self) -> None:
        for index in range(1, 10):
            name = f"rcn{index}"
            done = run("ip", "netns", "pids", name, check=False)
            for pid in done.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", name, check=False)
            run("ip", "link", "del", f"rcp{index}", check=False)
        _kill_matching(str(self.base))  # shims left by an engine killed first
        _unmount_under(self.base)
        for chain in ("DOCKER-USER", "FORWARD"):
            while run("iptables", "-D", chain, *RULE, check=False).returncode == 0:
                pass
        run("ip", "link", "del", BRIDGE, check=False)
        self.nodes.clear()
        self.lost.clear()


def _answers(node: Node) -> bool:
    try:
        client = node.client(timeout=5)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except docker.errors.DockerException:
        return False
    finally:
        client.close()


def _libraries(binary: Path) -> list[Path]:
    """The shared libraries ``binary`` loads, and its loader (from ldd)."""
    found = []
    for line in run("ldd", str(binary)).stdout.splitlines():
        parts = line.split()
        path = next((p for p in parts if p.startswith("/")), None)
        if path:
            found.append(Path(path))
    return found


def _kill_matching(text: str) -> None:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)


def _unmount_under(base: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{base}/")), reverse=True):
        run("umount", "-l", mount, check=False)


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
