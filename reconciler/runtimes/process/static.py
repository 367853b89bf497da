"""The built-in static file server:
``python -m reconciler.runtimes.process.static --dir DIST --port PORT``.

Threaded; serves files under DIST only (a path or symlink that resolves outside it is a 404);
``index.html`` for folders; no directory listings; correct content types; HEAD; clean exit on
SIGTERM.
"""

from __future__ import annotations

import argparse
import http.server
import mimetypes
import os
import posixpath
import signal
import sys
import threading
import urllib.parse
from functools import partial
from pathlib import Path
from typing import Any

EXTRA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".txt": "text/plain",
    ".xml": "application/xml",
    ".webmanifest": "application/manifest+json",
}
TEXT_TYPES = ("text/", "application/javascript", "application/json", "application/xml", "image/svg")


class Handler(http.server.SimpleHTTPRequestHandler):
    server_version = "reconciler-static"
    sys_version = ""
    root_real = ""

    extensions_map = {**mimetypes.types_map, **EXTRA_TYPES, "": "application/octet-stream"}

    def translate_path(self, path: str) -> str:
        """Map a URL path under the root; anything resolving outside it maps to nothing."""
        path = path.split("?", 1)[0].split("#", 1)[0]
        trailing = path.endswith("/")
        try:
            decoded = urllib.parse.unquote(path, errors="strict")
        except UnicodeDecodeError:
            return ""
        if "\0" in decoded or "\\" in decoded:
            return ""
        parts = [p for p in posixpath.normpath(decoded).split("/") if p and p not in (".", "..")]
        candidate = os.path.join(self.root_real, *parts)
        resolved = os.path.realpath(candidate)
        if resolved != self.root_real and not resolved.startswith(self.root_real + os.sep):
            return ""
        return resolved + ("/" if trailing and parts else "")

    def send_head(self) -> Any:
        path = self.translate_path(self.path)
        if not path:
            self.send_error(404, "File not found")
            return None
        if os.path.isdir(path):
            if not self.path.split("?", 1)[0].endswith("/"):
                return super().send_head()  # redirects to the slash form
            index = os.path.join(path, "index.html")
            if not os.path.isfile(os.path.realpath(index)) or not self._inside(index):
                self.send_error(404, "File not found")
                return None
        elif not os.path.isfile(path):
            self.send_error(404, "File not found")
            return None
        return super().send_head()

    def _inside(self, path: str) -> bool:
        resolved = os.path.realpath(path)
        return resolved.startswith(self.root_real + os.sep)

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(404, "File not found")
        return None

    def guess_type(self, path: str | os.PathLike[str]) -> str:
        kind = super().guess_type(path)
        if kind.startswith(TEXT_TYPES) and "charset" not in kind:
            return f"{kind}; charset=utf-8"
        return kind

    def log_message(self, format: str, *args: Any) -> None:
        sys.stdout.write(f"{self.address_string()} - {format % args}\n")
        sys.stdout.flush()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(directory: Path, host: str, port: int) -> Server:
    root = os.path.realpath(directory)
    handler = type("BoundHandler", (Handler,), {"root_real": root})
    server = Server((host, port), partial(handler, directory=root))
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.runtimes.process.static")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"static: {args.dir} is not a directory", file=sys.stderr)
        return 2
    server = serve(args.dir, args.host, args.port)

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"static: serving {args.dir} on http://{args.host}:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
