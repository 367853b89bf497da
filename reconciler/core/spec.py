"""Desired-state schema v1: the contents of ``desired/<project-id>.yaml``."""

from __future__ import annotations

import hashlib
import json
import re
import typing
import weakref
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, NewType

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from reconciler.core.kinds import RuntimeName

ProjectId = NewType("ProjectId", str)
SOURCE_TAGS = ("directory", "repository")  # in error locations after "source"; not keys

# a project id, written once: the API, the edge and the CLI check ids against it
PROJECT_ID = r"[a-z0-9][a-z0-9_-]{0,62}"
PROJECT_ID_RE = re.compile(f"^{PROJECT_ID}$")
HOST_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
HASH8_RE = re.compile(r"^[0-9a-f]{8}$")
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN, max_length=256)]


class InvalidProjectId(ValueError):
    pass


def check_project_id(value: str) -> ProjectId:
    """Return ``value`` as a ProjectId if it passes the allowlist; raise otherwise.

    Called once where an id enters: a desired file's name, a URL, a CLI argument, a directory
    or label read back from disk or an engine. Code that takes a ``ProjectId`` trusts it.
    """
    if not isinstance(value, str) or not PROJECT_ID_RE.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}..."
        raise InvalidProjectId(
            f"invalid project id {shown!r}: use 1-63 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )
    return ProjectId(value)


def check_hostname(name: str) -> str:
    """A lowercase DNS host name (RFC 1123 labels), as the edge will route it; raise otherwise."""
    labels = name.split(".")
    if (
        not 1 <= len(name) <= 253
        or len(labels) < 2
        or not all(HOST_LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValueError(
            f"domain {name[:80]!r} is not a host name: use lowercase labels of a-z, 0-9 and "
            "'-' separated by dots, e.g. www.example.com"
        )
    return name


def is_hash8(value: object) -> bool:
    return isinstance(value, str) and HASH8_RE.fullmatch(value) is not None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


SECRET_NAME = r"[a-z0-9][a-z0-9_.-]{0,62}"  # noqa: S105 - a pattern, not a secret


class SecretRef(_Model):
    """An env value kept out of the file: ``{secret: db-url}`` names a secret set with
    ``reconciler secret set db-url`` (or the API, or the dashboard)."""

    secret: Annotated[str, StringConstraints(pattern=f"^{SECRET_NAME}$")] = Field(
        description="the secret's name: lowercase letters, digits, '.', '_' and '-'"
    )


GENERATION_MAX = (1 << 63) - 1  # what the state store keeps (a signed 64-bit integer)


class Production(_Model):
    state: Literal["running", "stopped"] = "stopped"
    version: str = Field(default="latest", description="'latest' or an 8-hex version to pin")
    generation: int = Field(
        default=0, ge=0, le=GENERATION_MAX, description="bump to ask for a fresh build"
    )
    follow: bool = Field(
        default=False,
        description="deploy each new commit of the git ref (or each change of a source dir) "
        "automatically; a pinned version stops following until the pin is removed",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _digits(cls, value: object) -> object:
        """A version of 8 digits (about 1 content hash in 40) is a number to YAML: say so,
        rather than that a string was expected."""
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f"version {value} was read as a number: a version of digits only must be "
                f'quoted (version: "{value}"; one with leading zeros was changed by YAML, '
                "copy it again from `reconciler history`)"
            )
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value != "latest" and not is_hash8(value):
            raise ValueError("version must be 'latest' or 8 lowercase hex characters")
        return value

    @property
    def pinned(self) -> str | None:
        return None if self.version == "latest" else self.version


def _non_blank_command(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("command must not be empty; omit it or use null")
    return value


SIZE_MAX = 1 << 50  # 1024T: sizes past it are typos, and overflow what takes them
MEMORY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?) *([KMGT]?)(?:i?B)?$", re.IGNORECASE)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(value: object, what: str = "memory", minimum: int = 4 << 20) -> int:
    """Bytes from ``536870912``, ``512M``, ``512MiB`` or ``1.5G`` (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a size such as 512M or 1G")
    if isinstance(value, int):
        number = value
    else:
        found = MEMORY_RE.match(str(value).strip())
        if not found:
            raise ValueError(f"{what} {value!r} must be a size such as 512M or 1G")
        digits, unit = found.group(1), UNITS[found.group(2).upper()]
        number = SIZE_MAX + 1 if len(digits) > 20 else int(float(digits) * unit)
    if number > SIZE_MAX:
        raise ValueError(f"{what} must be at most {show_memory(SIZE_MAX)}")
    if number < minimum:
        raise ValueError(f"{what} must be at least {show_memory(minimum)}")
    return number


def show_memory(number: int) -> str:
    for suffix in ("T", "G", "M", "K"):
        if number % UNITS[suffix] == 0:
            return f"{number // UNITS[suffix]}{suffix}"
    return str(number)


class Limits(_Model):
    """What one instance (or one build) may use; unset: the daemon's default, if any."""

    memory: int | None = Field(default=None, description="bytes, or 512M, 1G (powers of 1024)")
    cpu: float | None = Field(default=None, gt=0, le=1024, description="cores, e.g. 0.5")
    pids: int | None = Field(default=None, ge=8, le=1_000_000, description="processes/threads")
    disk: int | None = Field(
        default=None,
        description="the project's releases on disk, all kept versions together (site limits "
        "only): 2G",
    )

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> int | None:
        return None if value is None else parse_memory(value)

    @field_validator("disk", mode="before")
    @classmethod
    def _disk(cls, value: object) -> int | None:
        return None if value is None else parse_memory(value, "disk", 1 << 20)

    def over(self, maximum: Limits, where: str) -> str | None:
        """Why these limits exceed ``maximum`` (None: they do not)."""
        if self.memory is not None and maximum.memory is not None and self.memory > maximum.memory:
            return (
                f"{where}.memory {show_memory(self.memory)} is over this host's maximum "
                f"{show_memory(maximum.memory)}"
            )
        if self.cpu is not None and maximum.cpu is not None and self.cpu > maximum.cpu:
            return f"{where}.cpu {self.cpu:g} is over this host's maximum {maximum.cpu:g}"
        if self.pids is not None and maximum.pids is not None and self.pids > maximum.pids:
            return f"{where}.pids {self.pids} is over this host's maximum {maximum.pids}"
        if self.disk is not None and maximum.disk is not None and self.disk > maximum.disk:
            return (
                f"{where}.disk {show_memory(self.disk)} is over this host's maximum "
                f"{show_memory(maximum.disk)}"
            )
        return None

    def otherwise(self, default: Limits) -> Limits:
        """These limits, each unset one taken from ``default``."""
        return Limits(
            memory=self.memory if self.memory is not None else default.memory,
            cpu=self.cpu if self.cpu is not None else default.cpu,
            pids=self.pids if self.pids is not None else default.pids,
            disk=self.disk if self.disk is not None else default.disk,
        )

    @property
    def empty(self) -> bool:
        return self.memory is None and self.cpu is None and self.pids is None and self.disk is None

    @classmethod
    def parse(cls, text: str) -> Limits:
        """``memory=512M,cpu=1,pids=256`` (any of them), as the daemon's flags take them."""
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep or name not in ("memory", "cpu", "pids", "disk"):
                raise ValueError(f"{item!r}: expected memory=SIZE, cpu=CORES, pids=N or disk=SIZE")
            try:
                values[name] = {"cpu": float, "pids": int}.get(name, str)(value)
            except ValueError:
                raise ValueError(f"{item!r}: {name} must be a number") from None
        return cls.model_validate(values)

    def describe(self) -> str:
        parts = []
        if self.memory is not None:
            parts.append(f"memory={show_memory(self.memory)}")
        if self.cpu is not None:
            parts.append(f"cpu={self.cpu:g}")
        if self.pids is not None:
            parts.append(f"pids={self.pids}")
        if self.disk is not None:
            parts.append(f"disk={show_memory(self.disk)}")
        return ",".join(parts) or "none"


class Build(_Model):
    command: str | None = Field(
        default=None,
        description="run by /bin/sh -c in the source dir; with build.output and start.command "
        "null, the build is found from the app's files (Procfile, package.json, "
        "requirements.txt...)",
    )
    output: str | None = Field(
        default=None,
        description="process: dir under source (default dist); docker: path in the image "
        "(default /app/dist)",
    )
    timeout: float = Field(default=600, gt=0, le=86400)
    limits: Limits = Field(default=Limits(), description="what a build may use")

    _command = field_validator("command")(_non_blank_command)


def _writable(value: list[str]) -> list[str]:
    for path in value:
        pure = PurePosixPath(path)
        if not pure.is_absolute() or ".." in pure.parts or path in ("/", "/tmp"):  # noqa: S108
            raise ValueError(f"writable path {path!r} must be an absolute path in the image")
    return value


class Start(_Model):
    command: str | None = Field(
        default=None,
        description="gets $PORT and $HOST; null: found from the app's files at its build (when "
        "build.command and build.output are null too), else a static site",
    )
    port: int | None = Field(default=None, ge=1, le=65535, description="docker: container port")
    writable: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="docker/swarm: paths that stay writable in the read-only container "
        "(a volume per project and path; /tmp is always a small tmpfs)",
    )

    _command = field_validator("command")(_non_blank_command)
    _paths = field_validator("writable")(_writable)


class Health(_Model):
    path: str = "/"
    timeout: float = Field(default=300, gt=0, le=3600)
    interval: float = Field(default=2, gt=0, le=60)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "\r\n\t #"):
            raise ValueError("path must start with '/' and hold no spaces, '#' or control chars")
        return value


GIT_REF_RE = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9._/@+-]{1,255}(?<![./])$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")


REGISTRY_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9][a-z0-9._-]*)*$")
CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9._/-]{1,128} *(==|!=) *[A-Za-z0-9._/:=-]{1,256}$")


class Placement(_Model):
    constraints: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="swarm placement constraints, e.g. node.role==manager, node.labels.zone!=b",
    )

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        for item in value:
            if not CONSTRAINT_RE.match(item):
                raise ValueError(
                    f"constraint {item!r} must read <attribute>==<value> or <attribute>!=<value>"
                )
        return value


class Deploy(_Model):
    """How many instances run and where: used by the swarm runtime (one service per project)."""

    replicas: int = Field(default=1, ge=1, le=100, description="swarm: tasks of the service")
    placement: Placement = Placement()
    healthcheck: list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]] | None = (
        Field(
            default=None,
            min_length=1,
            max_length=64,
            description="swarm: the container's health check command (exec form, no shell); "
            "default: busybox wget of health.path on the container port",
        )
    )


DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``; ``"off"`` (or 0): never.
    An unquoted ``off`` (or ``no``, ``false``) is YAML's false: never, too."""
    if value is False:
        return 0.0
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a text such as 15m (or off)")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().lower() == "off":
        return 0.0
    elif isinstance(value, str) and (found := DURATION_RE.match(value.strip().lower())):
        seconds = float(found.group(1)) * DURATION_UNITS[found.group(2)]
    else:
        raise ValueError(f"{str(value)[:40]!r} is not a duration: write e.g. 90s, 15m, 2h or off")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class Sleep(_Model):
    """When an idle dynamic site is stopped; its next request starts it again."""

    after: float | None = Field(
        default=None,
        description="stop the site after this long without a request (e.g. 15m; at least 10s); "
        "off: never; null: the daemon's --sleep-after",
    )

    @field_validator("after", mode="before")
    @classmethod
    def _after(cls, value: object) -> float | None:
        if value is None:
            return None
        seconds = parse_duration(value)
        if 0 < seconds < MIN_SLEEP_AFTER:
            raise ValueError(f"sleep.after must be at least {MIN_SLEEP_AFTER:g} seconds (or off)")
        return seconds


MIN_SLEEP_AFTER = 10.0
ROLLBACK_WINDOW = 300.0  # seconds a replaced instance is kept running by default


class Rollback(_Model):
    """How long a replaced instance is kept running, out of service, after a deploy: a
    rollback within the window is a switch to it (no start), like a static site's."""

    window: float = Field(
        default=ROLLBACK_WINDOW,
        description="dynamic sites behind the edge: keep the replaced instance this long "
        "(e.g. 5m, 90s; off: stop it once drained); it keeps its limits and memory",
    )

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: object) -> float:
        return parse_duration(value)


BRANCH_PATTERN_RE = re.compile(r"^[A-Za-z0-9._/*?+-]{1,200}$")


class Previews(_Model):
    """Branch previews of a git source: each matching branch built and served at its own
    address (a project ``<id>--<branch>`` the daemon keeps), updated on push, removed with
    its releases when the branch is deleted or its request closed."""

    branches: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="branch name patterns (feature/*, fix-?): each matching branch is previewed",
    )
    requests: bool = Field(
        default=False,
        description="preview the branch of each open pull or merge request (told by the "
        "forge's webhook), removed when the request is closed or merged",
    )
    max: int = Field(default=5, ge=1, le=50, description="previews awake at once; the ones "
                     "asked for least recently are put to sleep first")  # fmt: skip

    @field_validator("branches")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not BRANCH_PATTERN_RE.match(pattern) or ".." in pattern:
                raise ValueError(f"branch pattern {pattern[:60]!r} may hold letters, digits, "
                                 "'.', '_', '-', '/', '+' and the wildcards * and ?")  # fmt: skip
        return value

    @property
    def wanted(self) -> bool:
        return bool(self.branches) or self.requests


class GitSource(_Model):
    """A git repository and the ref whose commits are built."""

    git: str = Field(
        min_length=1,
        max_length=2048,
        description="a repository the git CLI can fetch: a path (relative to the desired "
        "file), file://, https:// or ssh:// URL",
    )
    ref: str = Field(default="main", description="a branch, a tag, refs/... or a full commit SHA")
    poll: float | None = Field(
        default=None,
        ge=5,
        le=86400,
        strict=False,
        description="seconds between checks of a remote for a new commit (follow); default: "
        "the daemon's --git-poll",
    )

    @field_validator("git")
    @classmethod
    def _git(cls, value: str) -> str:
        if value.startswith("-") or any(c in value for c in "\0\r\n"):
            raise ValueError("git must be a path or URL (not starting with '-', one line)")
        scheme = value.split("://", 1)[0].lower() if "://" in value else None
        if scheme is not None and scheme not in ("file", "https", "http", "ssh", "git"):
            raise ValueError(f"git URL scheme {scheme!r} is not allowed (file, https, ssh, git)")
        if "::" in value.split("/", 1)[0]:
            raise ValueError("git remote helpers (<transport>::<address>) are not allowed")
        return value

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        if not GIT_REF_RE.fullmatch(value) or value.endswith(".lock"):
            raise ValueError(
                "ref must be a branch or tag name, refs/..., or a commit SHA (no '..', "
                "spaces or leading '-')"
            )
        return value

    @property
    def pinned_commit(self) -> str | None:
        return self.ref if SHA_RE.fullmatch(self.ref) else None

    def location(self, desired_file: Path) -> str:
        """The repository as the git CLI is given it: a relative path resolved against the
        desired file's dir; URLs as written."""
        if "://" in self.git or _scp_like(self.git):
            return self.git
        base = Path(self.git).expanduser()
        if not base.is_absolute():
            base = desired_file.parent / base
        return _normpath(base)


def _scp_like(value: str) -> bool:
    """user@host:path, as git reads it (a colon before any slash)."""
    head, colon, _ = value.partition(":")
    return bool(colon) and "/" not in head and len(head) > 1


NotifyEvent = Literal[
    "deploy.succeeded", "deploy.failed", "rollback.succeeded", "rollback.failed",
    "repair.repeated",
]  # fmt: skip
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = typing.get_args(NotifyEvent)


class NotifyTarget(_Model):
    """Where a project's deploy notifications go."""

    url: str = Field(max_length=2048, description="an http(s) URL that takes a POST")
    format: Literal["json", "slack"] = Field(
        default="json", description="json: the event as JSON; slack: {text} (Slack, Mattermost)"
    )
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS),
        strict=False,
        description="which events (default: all)",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value):
            raise ValueError("url must be an http:// or https:// URL")
        return value


class ProjectSpec(_Model):
    """One desired-state file. ``source`` is kept as written; resolve it with ``source_dir``."""

    source: Annotated[
        Annotated[str, Tag("directory")] | Annotated[GitSource, Tag("repository")],
        Discriminator(lambda v: "repository" if isinstance(v, dict | GitSource) else "directory"),
    ] = Field(description="project source: a dir relative to the file, or {git: URL, ref: main}")
    runtime: RuntimeName | None = Field(
        default=None,
        strict=False,  # the enum's values as plain strings
        description="process | docker | swarm; default: the daemon's --runtime",
    )
    production: Production = Production()
    build: Build = Build()
    start: Start = Start()
    health: Health = Health()
    deploy: Deploy = Deploy()
    limits: Limits = Field(default=Limits(), description="what one instance may use")
    sleep: Sleep = Field(
        default=Sleep(), description="dynamic sites: stop when idle, start on the next request"
    )
    previews: Previews = Field(
        default=Previews(), description="git sources: a preview per matching branch or request"
    )
    keep: int = Field(default=2, ge=1, le=100, description="versions kept for rollback")
    rollback: Rollback = Field(
        default=Rollback(), description="the window in which a rollback is a switch"
    )
    env: dict[EnvName, str | SecretRef] = Field(
        default_factory=dict,
        description="the instance's environment: a value, or {secret: NAME} for a secret kept "
        "outside the file (encrypted under the data dir)",
    )
    domains: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="host names the edge serves this site on (HTTPS), besides its port",
    )
    notify: list[NotifyTarget] = Field(
        default_factory=list,
        max_length=10,
        description="webhooks told of deploys, failures, rollbacks and repeated repairs",
    )

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            check_hostname(name)
            if name in seen:
                raise ValueError(f"domain {name!r} is listed twice")
            seen.add(name)
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_values(cls, value: object) -> object:
        """One clear message for a value that is neither text nor a secret reference."""
        if isinstance(value, dict):
            for name, val in value.items():
                if not isinstance(val, str | dict):
                    raise ValueError(
                        f"{name} must be a string (quote numbers and booleans: "
                        f'"{val}") or {{secret: NAME}}'
                    )
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str | SecretRef]) -> dict[str, str | SecretRef]:
        for name, val in value.items():
            if isinstance(val, str) and "\0" in val:
                raise ValueError(f"env {name} holds a NUL character")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | GitSource) -> str | GitSource:
        if isinstance(value, str) and not value:
            raise ValueError("source must not be empty")
        return value

    @model_validator(mode="after")
    def _previews_of_git(self) -> ProjectSpec:
        if self.previews.wanted and not isinstance(self.source, GitSource):
            raise ValueError("previews need a git source: source: {git: URL, ref: main}")
        return self

    @property
    def git(self) -> GitSource | None:
        return self.source if isinstance(self.source, GitSource) else None

    def source_dir(self, desired_file: Path) -> Path:
        """A directory source, resolved (a git source has none: builds get a checkout)."""
        assert isinstance(self.source, str), "a git source has no source dir"
        base = Path(self.source).expanduser()
        if not base.is_absolute():
            base = desired_file.parent / base
        return Path(_normpath(base))

    def build_output(self, runtime: RuntimeName) -> str:
        if self.build.output is not None:
            return self.build.output
        return "dist" if runtime == RuntimeName.PROCESS else "/app/dist"

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The secrets ``env`` refers to, sorted."""
        return tuple(sorted({v.secret for v in self.env.values() if isinstance(v, SecretRef)}))

    def with_env(self, values: dict[str, str]) -> ProjectSpec:
        """This spec with every secret reference replaced by its value (``values`` by
        secret name): what a runtime is handed, never stored or shown."""
        env = {k: values[v.secret] if isinstance(v, SecretRef) else v for k, v in self.env.items()}
        return self.model_copy(update={"env": env})

    @property
    def plain_env(self) -> dict[str, str]:
        """``env`` of a spec with no secret references left (see ``with_env``)."""
        found = {k: v for k, v in self.env.items() if isinstance(v, str)}
        if len(found) != len(self.env):
            raise ValueError("the spec still refers to secrets; resolve them first")
        return found

    def instance_config(
        self, default_runtime: RuntimeName, secrets: Mapping[str, str | None] | None = None
    ) -> str:
        """What starts an instance besides its release: the runtime, ``start`` and ``env``
        (with the revision of each secret it refers to: a new value is a new instance).
        An instance is a release run with these settings; when they change, a new instance of
        the same release replaces the old one (8 hex characters, shown beside the version)."""
        runtime = self.runtime or default_runtime
        start = self.start.model_dump(mode="json")
        if not self.start.writable:
            del start["writable"]  # added later: settings without it keep their digest
        env = {k: v if isinstance(v, str) else {"secret": v.secret} for k, v in self.env.items()}
        settings: dict[str, Any] = {"runtime": runtime, "start": start, "env": env}
        if self.secret_names:
            settings["secrets"] = {name: (secrets or {}).get(name) for name in self.secret_names}
        if not self.limits.empty:
            settings["limits"] = self.limits.model_dump(mode="json")
        if runtime == RuntimeName.SWARM:  # the service's shape is part of what runs
            settings["deploy"] = self.deploy.model_dump(mode="json")
            settings["health"] = self.health.model_dump(mode="json")
        canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]

    def digest(self) -> str:
        """Digest of the whole spec: a failure is tied to it, so any edit tries again.
        Worked out once per spec (specs are frozen)."""
        memo = _DIGESTS.get(id(self))
        if memo is not None and memo[0]() is self:
            return memo[1]
        data = self.model_dump(mode="json")
        # added later: the digests of specs without them stay as they were
        if self.deploy == Deploy():
            del data["deploy"]
        if self.limits.empty:
            del data["limits"]
        if self.build.limits.empty:
            del data["build"]["limits"]
        if not self.start.writable:
            del data["start"]["writable"]
        if self.sleep == Sleep():
            del data["sleep"]
        if self.previews == Previews():
            del data["previews"]
        if self.rollback == Rollback():
            del data["rollback"]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        found = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        key = id(self)
        _DIGESTS[key] = (weakref.ref(self, lambda _ref: _DIGESTS.pop(key, None)), found)
        return found


# digests of live specs, by identity (not in the model: ``model_copy`` would carry it over)
_DIGESTS: dict[int, tuple[weakref.ref[ProjectSpec], str]] = {}


def _normpath(path: Path) -> str:
    import os.path

    return os.path.normpath(str(path))


def json_schema() -> dict[str, Any]:
    schema = ProjectSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "reconciler desired state (schema v1)"
    return schema
