"""Copy a build's output out of an image, safely.

The dist is fetched through the archive API of a created (never started) container and
extracted with tarfile's ``data`` filter: no absolute paths, no ``..``, no links leaving the
folder, no device files.
"""

from __future__ import annotations

import contextlib
import tarfile
from pathlib import Path, PurePosixPath

import docker.errors
import requests

from reconciler.core.errors import BuildFailed
from reconciler.runtimes.docker.engine import Engine, engine_calls
from reconciler.runtimes.docker.labels import LABEL_ROLE, MANAGED_BY, MANAGER


def extract_dist(engine: Engine, image_id: str, output: str, work_dir: Path) -> Path:
    """Copy ``output`` out of the image into ``work_dir/dist``; returns that dir."""
    work_dir.mkdir(parents=True, exist_ok=True)
    archive = work_dir / "dist.tar"
    with engine_calls():
        container = engine.client.containers.create(
            image_id,
            entrypoint=["/reconciler-extract-only"],
            labels={MANAGED_BY: MANAGER, LABEL_ROLE: "extract"},
        )
    try:
        with engine_calls():
            try:
                bits, _stat = container.get_archive(output)
            except docker.errors.NotFound:
                raise BuildFailed(
                    f"Build failed: build.output {output} does not exist in the built image"
                ) from None
            with open(archive, "wb") as fh:
                for chunk in bits:
                    fh.write(chunk)
    finally:
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            container.remove(force=True)
    dist = work_dir / "dist"
    dist.mkdir()
    try:
        _untar(archive, dist, output)
    finally:
        archive.unlink(missing_ok=True)
    return dist


def _untar(archive: Path, dist: Path, output: str) -> None:
    """Extract the archive of ``output`` (its entries start with its last name) into ``dist``."""
    top = PurePosixPath(output).name
    try:
        with tarfile.open(archive) as tar:
            members = []
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if not parts or parts[0] != top:
                    raise BuildFailed(f"unexpected entry {member.name!r} in the image archive")
                if len(parts) == 1:
                    if not member.isdir():
                        raise BuildFailed(f"build.output {output} is not a directory")
                    continue
                member.name = str(PurePosixPath(*parts[1:]))
                if member.islnk():
                    link = PurePosixPath(member.linkname).parts
                    if not link or link[0] != top:
                        raise BuildFailed(f"hard link {member.name} leaves {output}")
                    member.linkname = str(PurePosixPath(*link[1:]))
                members.append(member)
            tar.extractall(dist, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise BuildFailed(f"Build failed: refusing {output} from the image: {exc}") from None
    except tarfile.TarError as exc:
        raise BuildFailed(f"Build failed: bad archive of {output}: {exc}") from None
