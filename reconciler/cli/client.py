"""The CLI's view of reconciler: local (desired dir + state DB) or remote (the HTTP API).

Both expose the same calls and return plain JSON-shaped dicts, so the CLI renders one way
whichever it talks to. Local calls go through ``reconciler.operations`` (the same code the API
runs); remote calls go through httpx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx

from reconciler.core.config import Config
from reconciler.core.kinds import EdgeMode
from reconciler.readside.operations import Operations
from reconciler.readside.terms import ErrorKind, Event, OperationError
from reconciler.stores.opened import open_stores


def kind_of(http_status: int) -> ErrorKind:
    """The kind of an API error answer (the inverse of the API's mapping)."""
    if http_status in (400, 413, 415, 422):
        return ErrorKind.INVALID
    if http_status in (401, 403):
        return ErrorKind.DENIED
    if http_status == 404:
        return ErrorKind.NOT_FOUND
    if http_status == 409:
        return ErrorKind.CONFLICT
    return ErrorKind.UNAVAILABLE


class Client(Protocol):
    def projects(self) -> dict[str, Any]: ...
    def health(self) -> dict[str, Any]: ...
    def status(self, project: str) -> dict[str, Any]: ...
    def deploy(self, project: str) -> dict[str, Any]: ...
    def stop(self, project: str) -> dict[str, Any]: ...
    def history(self, project: str) -> dict[str, Any]: ...
    def rollback(self, project: str, version: str, *, force: bool = False) -> dict[str, Any]: ...
    def start(self, project: str) -> dict[str, Any]: ...
    def pin(self, project: str, version: str, *, force: bool = False) -> dict[str, Any]: ...
    def unpin(self, project: str) -> dict[str, Any]: ...
    def secrets(self) -> list[dict[str, Any]]: ...
    def set_secret(self, name: str, value: str) -> bool: ...
    def delete_secret(self, name: str) -> None: ...
    def follow(self, project: str, last_id: int | None = None) -> Iterator[Event | None]: ...
    def log(self, project: str, name: str, *, offset: int | None, tail: int) -> dict[str, Any]: ...
    def close(self) -> None: ...


class LocalClient:
    def __init__(self, desired: Path, data: Path) -> None:
        config = Config(desired_dir=desired, data_dir=data, edge=EdgeMode.OFF)
        if not config.layout.state_db.exists():
            raise OperationError(
                ErrorKind.UNAVAILABLE,
                f"no state database at {config.layout.state_db}: has the daemon run with "
                f"--data {data}?",
            )
        self.ops = Operations.of(open_stores(config), config)
        self.ops.actor = "cli"

    def projects(self) -> dict[str, Any]:
        return self.ops.projects().model_dump(mode="json")

    def health(self) -> dict[str, Any]:
        row = self.ops.db.edge()
        edge = None
        if row is not None:
            edge = {"mode": row.mode.value, "status": row.status, "pid": row.pid,
                    "version": row.version, "sites": row.sites, "error": row.error}  # fmt: skip
        running, message = self.ops.daemon()
        daemon = {"running": running, "message": message}
        return {"status": "ok", "database": True, "edge": edge, "daemon": daemon}

    def status(self, project: str) -> dict[str, Any]:
        return self.ops.status(self.ops.project(project)).model_dump(mode="json")

    def deploy(self, project: str) -> dict[str, Any]:
        return self.ops.deploy(self.ops.project(project)).model_dump(mode="json")

    def stop(self, project: str) -> dict[str, Any]:
        return self.ops.stop(self.ops.project(project)).model_dump(mode="json")

    def history(self, project: str) -> dict[str, Any]:
        return self.ops.history(self.ops.project(project)).model_dump(mode="json")

    def plan(self, project: str) -> dict[str, Any]:
        return self.ops.plan(self.ops.project(project)).model_dump(mode="json")

    def rollback(self, project: str, version: str, *, force: bool = False) -> dict[str, Any]:
        found = self.ops.rollback(self.ops.project(project), version, force=force)
        return found.model_dump(mode="json")

    def start(self, project: str) -> dict[str, Any]:
        return self.ops.start(self.ops.project(project)).model_dump(mode="json")

    def pin(self, project: str, version: str, *, force: bool = False) -> dict[str, Any]:
        found = self.ops.pin(self.ops.project(project), version, force=force)
        return found.model_dump(mode="json")

    def unpin(self, project: str) -> dict[str, Any]:
        return self.ops.unpin(self.ops.project(project)).model_dump(mode="json")

    def secrets(self) -> list[dict[str, Any]]:
        return self.ops.secrets()

    def set_secret(self, name: str, value: str) -> bool:
        return self.ops.set_secret(name, value)

    def delete_secret(self, name: str) -> None:
        self.ops.delete_secret(name)

    def follow(self, project: str, last_id: int | None = None) -> Iterator[Event | None]:
        return self.ops.follow(self.ops.project(project), last_id)

    def log(self, project: str, name: str, *, offset: int | None, tail: int) -> dict[str, Any]:
        return self.ops.read_log(self.ops.project(project), name, offset=offset, tail=tail)

    def close(self) -> None:
        self.ops.db.close()


class RemoteClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OperationError(
                ErrorKind.UNAVAILABLE, f"cannot reach the API at {self.base}: {exc}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200]}
        if response.status_code >= 400 and not (
            response.status_code == 500 and isinstance(body, dict) and "success" in body
        ):
            message = body.get("error") if isinstance(body, dict) else None
            kind = kind_of(response.status_code)
            named = body.get("kind") if isinstance(body, dict) else None
            if named in {k.value for k in ErrorKind}:
                kind = ErrorKind(named)
            raise OperationError(kind, str(message or response.reason_phrase))
        return body  # type: ignore[no-any-return]

    def projects(self) -> dict[str, Any]:
        return self._call("GET", "/api/projects")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def status(self, project: str) -> dict[str, Any]:
        return self._call("GET", f"/api/projects/{project}/production")

    def deploy(self, project: str) -> dict[str, Any]:
        return self._call("POST", f"/api/projects/{project}/deploy", json={})

    def stop(self, project: str) -> dict[str, Any]:
        return self._call("POST", f"/api/projects/{project}/stop-production", json={})

    def history(self, project: str) -> dict[str, Any]:
        return self._call("GET", f"/api/projects/{project}/production-history")

    def rollback(self, project: str, version: str, *, force: bool = False) -> dict[str, Any]:
        return self._call(
            "POST",
            f"/api/projects/{project}/rollback-production",
            json={"toHash": version, "force": force},
            timeout=None,
        )

    def start(self, project: str) -> dict[str, Any]:
        return self._call("POST", f"/api/projects/{project}/start", json={})

    def pin(self, project: str, version: str, *, force: bool = False) -> dict[str, Any]:
        body = {"version": version, "force": force}
        return self._call("POST", f"/api/projects/{project}/pin", json=body)

    def unpin(self, project: str) -> dict[str, Any]:
        return self._call("POST", f"/api/projects/{project}/unpin", json={})

    def secrets(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call("GET", "/api/secrets")["secrets"]
        return found

    def set_secret(self, name: str, value: str) -> bool:
        return bool(self._call("PUT", f"/api/secrets/{name}", json={"value": value})["changed"])

    def delete_secret(self, name: str) -> None:
        self._call("DELETE", f"/api/secrets/{name}")

    def log(self, project: str, name: str, *, offset: int | None, tail: int) -> dict[str, Any]:
        params: dict[str, Any] = {"log": name, "tail": tail}
        if offset is not None:
            params["offset"] = offset
        return self._call("GET", f"/api/projects/{project}/production-logs", params=params)

    def follow(self, project: str, last_id: int | None = None) -> Iterator[Event | None]:
        headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
        try:
            with self.http.stream(
                "GET",
                f"/api/projects/{project}/production-stream",
                headers=headers,
                timeout=httpx.Timeout(30, read=None),
            ) as response:
                if response.status_code != 200:
                    response.read()
                    try:
                        message = response.json().get("error")
                    except ValueError:
                        message = response.reason_phrase
                    raise OperationError(kind_of(response.status_code), str(message))
                block: dict[str, str] = {}
                for line in response.iter_lines():
                    if line == "":
                        if "event" in block:
                            yield Event(
                                int(block.get("id", "0")),
                                block["event"],
                                json.loads(block.get("data", "{}")),
                            )
                            if block["event"] == "stream.end":
                                return
                        block = {}
                    elif line.startswith(":"):
                        yield None
                    elif ": " in line:
                        key, value = line.split(": ", 1)
                        block[key] = value
        except httpx.HTTPError as exc:
            raise OperationError(
                ErrorKind.UNAVAILABLE, f"the event stream from {self.base} broke: {exc}"
            ) from None

    def close(self) -> None:
        self.http.close()
