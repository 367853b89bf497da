"""The files the edge's one configuration routes requests through (see ``edge.config``):

::

    <routes>/ports/<port>/static                                       a static site: a file,
    <routes>/ports/<port>/dist   -> <releases>/<id>/current/dist        and what it serves
    <routes>/ports/<port>/up     -> <releases>/<id>/slot                a dynamic site
    <routes>/ports/<port>/svc    -> <releases>/<id>/tasks               a swarm service
    <routes>/ports/<port>/wake                                         it sleeps: a file
    <routes>/hosts/<domain>           -> ../ports/<port>                 its domains
    <releases>/<id>/slots/a/a@127.0.0.1:<port of slot a>                 the slots' upstreams

Serving a site, stopping it, moving a domain are link changes (each one atomic: a new link
renamed over the old), never a configuration load. ``apply`` makes the files match the
sites that should be served and remembers what it wrote, so that the next call touches only
what changed; ``apply(..., full=True)`` reads the directory again first, and ``check`` (the
periodic verification) compares the files of the next slice of sites with the disk, so that its
cost does not grow with the number of sites.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from reconciler.core.kinds import ServeMode
from reconciler.core.rotation import Rotation
from reconciler.core.spec import ProjectId
from reconciler.edge.config import EdgeSettings, Site
from reconciler.stores.releases import SLOT, SLOT_NAMES, SLOTS, TASKS

KIND_OF = {ServeMode.STATIC: "static", ServeMode.DYNAMIC: "up", ServeMode.SERVICE: "svc"}
NAMES = ("static", "dist", "up", "svc", "wake")
MARKERS = ("static", "wake")  # route files that are empty files, not links
MARKER = ""  # the target of an entry that is an empty file, not a link

Links = dict[Path, str]  # path -> link target (MARKER: an empty file)


class RouteFiles:
    def __init__(self, routes: Path, releases: Path) -> None:
        self.ports = routes / "ports"
        self.hosts = routes / "hosts"
        self.releases = releases
        self._written: Links | None = None  # what the routes hold (None: read them first)
        self._by_site: dict[ProjectId, Links] = {}
        self._upstreams: dict[ProjectId, tuple[int, int]] = {}
        self._rotation = Rotation()

    def links_of(self, site: Site | None) -> Links:
        """The route files one site needs (none for a site that is not served)."""
        links: Links = {}
        kind = KIND_OF.get(site.mode) if site is not None else None
        if site is None or kind is None:
            return links
        project = self.releases / site.project_id
        here = self.ports / str(site.port)
        if kind == "static":  # the marker of a static site, and the dist it serves
            links[here / "dist"] = str(project / "current" / "dist")
            links[here / "static"] = MARKER
        else:
            links[here / kind] = str(project / (SLOT if kind == "up" else TASKS))
            if site.asleep:
                links[here / "wake"] = MARKER
        for domain in site.domains:
            links[self.hosts / domain] = f"../ports/{site.port}"
        return links

    def wanted(self, sites: Mapping[ProjectId, Site]) -> Links:
        return {path: t for site in sites.values() for path, t in self.links_of(site).items()}

    def apply(
        self,
        sites: Mapping[ProjectId, Site],
        *,
        full: bool = False,
        changed: Iterable[ProjectId] | None = None,
    ) -> int:
        """Make the route files say ``sites``; returns how many links changed. ``changed``:
        only these sites changed since the last call (the others' files are not looked at);
        ``full`` (or a first call): every file is compared with what is on disk."""
        if full or self._written is None or changed is None:
            return self._apply_all(sites, full=full)
        count = 0
        for project_id in set(changed):
            site = sites.get(project_id)
            before = self._by_site.pop(project_id, {})
            after = self.links_of(site)
            count += self._write(after, before)
            if after:
                self._by_site[project_id] = after
            if site is not None and site.mode == ServeMode.DYNAMIC and site.slots is not None:
                self._slot_upstreams(site.project_id, site.slots, False)
        return count

    def _apply_all(self, sites: Mapping[ProjectId, Site], *, full: bool) -> int:
        if full or self._written is None:
            self._written = self._read()
        wanted = self.wanted(sites)
        count = self._write(wanted, dict(self._written))
        self._by_site = {
            project_id: links
            for project_id, site in sites.items()
            if (links := self.links_of(site))
        }
        for site in sites.values():
            if site.mode == ServeMode.DYNAMIC and site.slots is not None:
                self._slot_upstreams(site.project_id, site.slots, full)
        return count

    def check(self, sites: Mapping[ProjectId, Site], count: int) -> int:
        """The periodic verification: the next ``count`` sites' files compared with the disk
        (what differs is written again, what no site wants in their dirs removed), and once
        per round the port and host dirs no site wants removed. Returns how many files it
        mended."""
        if self._written is None:
            return self._apply_all(sites, full=True)
        mended = 0
        for project_id in self._rotation.take(sorted(sites), count):
            site = sites[ProjectId(project_id)]
            links = self._by_site.get(site.project_id, {})
            here = self.ports / str(site.port)
            names = {path.name for path in links if path.parent == here}
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(here):
                    if name not in names:
                        _remove(here / name)
                        mended += 1
            for path, target in links.items():
                if _on_disk(path) != target:
                    _link(path, target)
                    mended += 1
            if site.mode == ServeMode.DYNAMIC and site.slots is not None:
                self._slot_upstreams(site.project_id, site.slots, True)
        return mended + (self._strays(sites) if self._rotation.wrapped else 0)

    def _strays(self, sites: Mapping[ProjectId, Site]) -> int:
        """Port and host entries no served site accounts for (one listing of each dir)."""
        ports = {str(site.port) for site in sites.values() if KIND_OF.get(site.mode)}
        hosts = {d for site in sites.values() if KIND_OF.get(site.mode) for d in site.domains}
        stray = 0
        for root, wanted in ((self.ports, ports), (self.hosts, hosts)):
            for name in os.listdir(root):
                if name not in wanted:
                    _remove(root / name)
                    stray += 1
        return stray

    def _write(self, after: Links, before: Links) -> int:
        """Files from ``before`` to ``after``: the new and changed written, the gone removed."""
        assert self._written is not None
        count = 0
        for path, target in after.items():
            if self._written.get(path) != target:
                _link(path, target)
                self._written[path] = target
                count += 1
        for path in before:
            if path not in after and path in self._written:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                del self._written[path]
                _prune(path.parent, stop=(self.ports, self.hosts))
                count += 1
        return count

    def _slot_upstreams(self, project_id: ProjectId, slots: tuple[int, int], full: bool) -> None:
        """``slots/<s>/<s>@127.0.0.1:<port>``: the address of each slot, in the dir the
        project's ``slot`` link points at (its flip is the switch)."""
        if not full and self._upstreams.get(project_id) == slots:
            return
        for name, port in zip(SLOT_NAMES, slots, strict=True):
            where = self.releases / project_id / SLOTS / name
            where.mkdir(parents=True, exist_ok=True)
            wanted = f"{name}@127.0.0.1:{port}"
            for entry in os.scandir(where):
                if "@" in entry.name and entry.name != wanted:
                    os.unlink(entry.path)
            (where / wanted).touch()
        self._upstreams[project_id] = slots

    def _read(self) -> Links:
        """The links the routes hold now (anything else found there is removed)."""
        found: Links = {}
        for root in (self.ports, self.hosts):
            root.mkdir(parents=True, exist_ok=True)
        for port in os.scandir(self.ports):
            if not port.name.isdigit() or not port.is_dir(follow_symlinks=False):
                _remove(Path(port.path))
                continue
            for kind in os.scandir(port.path):
                if kind.name in NAMES and kind.is_symlink():
                    found[Path(kind.path)] = os.readlink(kind.path)
                elif kind.name in MARKERS and kind.is_file(follow_symlinks=False):
                    found[Path(kind.path)] = MARKER
                else:
                    _remove(Path(kind.path))
            _prune(Path(port.path), stop=(self.ports,))  # nothing left: gone
        for host in os.scandir(self.hosts):
            if host.is_symlink():
                found[Path(host.path)] = os.readlink(host.path)
            else:
                _remove(Path(host.path))
        return found


class PreviewLinks:
    """``<routes>/previews/<id>/<version>`` -> that version's dist, for each kept version
    served as files; for a version that runs as an app, a dir holding ``app``, and ``wake``
    while no preview instance runs, else ``@<address>`` of the one that does (the edge's
    preview server answers through them; see ``edge.config``). The links are written by
    whoever reconciles the project, an app's dir's contents by ``VersionPreviews``; the edge's
    own thread never touches them."""

    def __init__(self, root: Path, releases: Path) -> None:
        self.root = root
        self.releases = releases

    @classmethod
    def of(cls, settings: EdgeSettings) -> PreviewLinks:
        return cls(settings.routes / "previews", settings.releases)

    def sync(self, project_id: ProjectId, versions: Iterable[str], apps: Iterable[str] = ()) -> int:
        """Make the project's entries name ``versions`` (served as files) and ``apps`` (run
        on demand); returns how many changed."""
        here = self.root / project_id
        wanted = {v: str(self.releases / project_id / v / "dist") for v in versions}
        running = set(apps) - set(wanted)
        present: dict[str, bool] = {}  # an entry: a link (files), else a dir (an app)
        with contextlib.suppress(FileNotFoundError):
            present = {e.name: e.is_symlink() for e in os.scandir(here)}
        changed = 0
        for name, linked in list(present.items()):
            if not ((name in wanted and linked) or (name in running and not linked)):
                _remove(here / name)  # gone, or turned from files to an app (or back)
                del present[name]
                changed += 1
        for version in sorted(set(wanted) - set(present)):
            _link(here / version, wanted[version])
            changed += 1
        for version in sorted(running - set(present)):
            (here / version).mkdir(parents=True, exist_ok=True)
            (here / version / "app").touch()
            (here / version / "wake").touch()
            changed += 1
        if not wanted and not running:
            _prune(here, stop=(self.root,))
        return changed

    def app_dir(self, project_id: ProjectId, version: str) -> Path | None:
        """The dir of an app version's preview (None: it has none)."""
        here = self.root / project_id / version
        return here if (here / "app").is_file() and not here.is_symlink() else None

    def awake(self, project_id: ProjectId, version: str, address: str | None) -> None:
        """Route an app version's preview to ``address`` (None: to the waker again)."""
        here = self.app_dir(project_id, version)
        if here is None:
            return
        for entry in os.scandir(here):
            if entry.name.startswith("@") and entry.name != f"@{address}":
                os.unlink(entry.path)
        if address is None:
            (here / "wake").touch()
        else:
            (here / f"@{address}").touch()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(here / "wake")

    def apps(self) -> list[tuple[ProjectId, str]]:
        """Every app version that has a preview dir."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for project in os.scandir(self.root):
                for version in os.scandir(project.path):
                    if not version.is_symlink() and os.path.isfile(f"{version.path}/app"):
                        found.append((ProjectId(project.name), version.name))
        return found


def _link(path: Path, target: str) -> None:
    """``path`` -> ``target`` (or an empty file: ``MARKER``), replacing what is there in one
    rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    if target == MARKER:
        temporary.touch()
    else:
        os.symlink(target, temporary)
    os.replace(temporary, path)


def _on_disk(path: Path) -> str | None:
    """What ``path`` holds as a route file: its link target, ``MARKER`` for an empty file."""
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return None
    except OSError:
        return MARKER if path.is_file() and not path.is_symlink() else None


def _prune(directory: Path, *, stop: tuple[Path, ...]) -> None:
    """Remove ``directory`` and its parents while they are empty, up to ``stop``."""
    while directory not in stop and directory != directory.parent:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
