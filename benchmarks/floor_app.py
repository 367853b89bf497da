"""The floor under the API's latency: a Flask app that answers ``{"ok": true}``, served by
waitress with as many threads as the API, measured with the same wrk settings.

Run: python benchmarks/floor_app.py PORT THREADS
"""

from __future__ import annotations

import sys

import waitress
from flask import Flask

app = Flask(__name__)


@app.get("/")
def index() -> dict[str, bool]:
    return {"ok": True}


if __name__ == "__main__":
    waitress.serve(
        app, listen=f"127.0.0.1:{sys.argv[1]}", threads=int(sys.argv[2]), _quiet=True,
        asyncore_use_poll=True,
    )  # fmt: skip
