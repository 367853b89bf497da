from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PYTHON, REPO, free_port
from tests.integration.harness import wait_for


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    dist = tmp_path / "dist"
    (dist / "docs").mkdir(parents=True)
    (dist / "empty").mkdir()
    (dist / "index.html").write_text("<h1>home</h1>")
    (dist / "docs" / "index.html").write_text("docs")
    (dist / "app.js").write_text("console.log(1)")
    (dist / "style.css").write_text("body{}")
    (dist / "data.json").write_text("{}")
    (dist / "font.woff2").write_bytes(b"wOF2")
    (dist / "blob.unknownext").write_bytes(b"\0\1")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    os.symlink(tmp_path / "secret.txt", dist / "leak.txt")
    os.symlink(tmp_path, dist / "leakdir")
    os.symlink("index.html", dist / "alias.html")
    port = free_port()
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "reconciler.runtimes.process.static",
            "--dir",
            str(dist),
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() or True,
        10,
        "the static server to listen",
    )
    yield base, proc
    proc.terminate()
    proc.wait(5)


@pytest.mark.parametrize(
    ("path", "status", "ctype", "body"),
    [
        ("/", 200, "text/html; charset=utf-8", b"<h1>home</h1>"),
        ("/index.html", 200, "text/html; charset=utf-8", b"<h1>home</h1>"),
        ("/docs/", 200, "text/html; charset=utf-8", b"docs"),
        ("/app.js", 200, "text/javascript; charset=utf-8", b"console.log(1)"),
        ("/style.css", 200, "text/css; charset=utf-8", b"body{}"),
        ("/data.json", 200, "application/json; charset=utf-8", b"{}"),
        ("/font.woff2", 200, "font/woff2", b"wOF2"),
        ("/blob.unknownext", 200, "application/octet-stream", b"\0\1"),
        ("/alias.html", 200, "text/html; charset=utf-8", b"<h1>home</h1>"),
        ("/app.js?v=3", 200, "text/javascript; charset=utf-8", b"console.log(1)"),
        ("/missing.html", 404, None, None),
        ("/empty/", 404, None, None),
    ],
)
def test_serves(
    site: tuple[str, subprocess.Popen[bytes]],
    path: str,
    status: int,
    ctype: str | None,
    body: bytes | None,
) -> None:
    response = httpx.get(site[0] + path)
    assert response.status_code == status
    if ctype is not None:
        assert response.headers["content-type"] == ctype
    if body is not None:
        assert response.content == body


def test_folder_without_slash_redirects(site: tuple[str, subprocess.Popen[bytes]]) -> None:
    response = httpx.get(site[0] + "/docs")
    assert response.status_code == 301 and response.headers["location"] == "/docs/"


def test_head(site: tuple[str, subprocess.Popen[bytes]]) -> None:
    response = httpx.head(site[0] + "/index.html")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len("<h1>home</h1>"))
    assert response.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/docs/../../secret.txt",
        "/leak.txt",
        "/leakdir/secret.txt",
        "/leakdir/",
        "/%00",
        "/..\\secret.txt",
        "/%ff%fe",
        "//etc/passwd",
    ],
)
def test_traversal_gets_404(site: tuple[str, subprocess.Popen[bytes]], path: str) -> None:
    with socket.create_connection(("127.0.0.1", int(site[0].rsplit(":", 1)[1]))) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.0 404"), data[:80]
    assert b"TOP SECRET" not in data and b"root:" not in data


def test_sigterm_exits_cleanly(site: tuple[str, subprocess.Popen[bytes]]) -> None:
    proc = site[1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
