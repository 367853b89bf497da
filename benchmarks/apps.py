"""Real apps on the first try: a Flask, an Express and a Django app, each in the shape its
getting-started guide gives it, deployed from the smallest desired file (a source and
``state: running``: the build and start are found from their files), then redeployed with a
one-line change (a new ``generation``).

Figures: the first deploy (with its installs from the registries) and the redeploy, from the
desired-file write to the stable URL serving the new text. Target: a redeploy <= 5 s."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Daemon, summary

FLASK = {
    "app.py": 'from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.route("/")\n'
    'def hello_world():\n    return "<p>Hello, World! {n}</p>"\n',
    "requirements.txt": "flask\n",
}
EXPRESS = {
    "index.js": "const express = require('express')\nconst app = express()\n"
    "const port = process.env.PORT || 3000\n\n"
    "app.get('/', (req, res) => {{\n  res.send('Hello World! {n}')\n}})\n\n"
    "app.listen(port, () => {{\n  console.log(`Example app listening on port ${{port}}`)\n}})\n",
    "package.json": json.dumps(
        {
            "name": "myapp",
            "version": "1.0.0",
            "main": "index.js",
            "scripts": {"start": "node index.js"},
            "dependencies": {"express": "^4.21.0"},
        },
        indent=2,
    ),
}
DJANGO = {
    "requirements.txt": "django>=4.2,<6\ngunicorn\n",
    "manage.py": "#!/usr/bin/env python\nimport os\nimport sys\n\nif __name__ == '__main__':\n"
    "    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
    "    from django.core.management import execute_from_command_line\n"
    "    execute_from_command_line(sys.argv)\n",
    "mysite/__init__.py": "",
    "mysite/settings.py": "from pathlib import Path\nBASE_DIR = Path(__file__).resolve().parent.parent\n"
    "SECRET_KEY = 'benchmark-only'\nDEBUG = False\nALLOWED_HOSTS = ['*']\n"
    "INSTALLED_APPS = ['django.contrib.contenttypes', 'django.contrib.staticfiles', 'polls']\n"
    "MIDDLEWARE = []\nROOT_URLCONF = 'mysite.urls'\nWSGI_APPLICATION = 'mysite.wsgi.application'\n"
    "DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', "
    "'NAME': BASE_DIR / 'db.sqlite3'}}}}\n"
    "STATIC_URL = 'static/'\nSTATIC_ROOT = BASE_DIR / 'staticfiles'\n",
    "mysite/urls.py": "from django.urls import include, path\n\n"
    "urlpatterns = [path('', include('polls.urls'))]\n",
    "mysite/wsgi.py": "import os\nfrom django.core.wsgi import get_wsgi_application\n"
    "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
    "application = get_wsgi_application()\n",
    "polls/__init__.py": "",
    "polls/views.py": "from django.http import HttpResponse\n\n\ndef index(request):\n"
    '    return HttpResponse("Hello, world. You\'re at the polls index. {n}")\n',
    "polls/urls.py": "from django.urls import path\n\nfrom . import views\n\n"
    "urlpatterns = [path('', views.index, name='index')]\n",
    "Procfile": "web: gunicorn mysite.wsgi\nrelease: python manage.py migrate --noinput\n",
}
APPS = {"flask": (FLASK, "Hello, World! {n}"), "express": (EXPRESS, "Hello World! {n}"),
        "django": (DJANGO, "at the polls index. {n}")}  # fmt: skip


def _write(root: Path, files: dict[str, str], n: int) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            text.format(n=n) if "{n}" in text else text.replace("{{", "{").replace("}}", "}")
        )


def _desired(name: str, generation: int) -> str:
    return (f"source: ../{name}\nproduction:\n  state: running\n  generation: {generation}\n"
            "health:\n  timeout: 300\n")  # fmt: skip


def run(tmp: Path, redeploys: int = 3, apps: str = "flask,express,django") -> dict[str, Any]:
    root = tmp / "a"  # a short path: the edge's admin socket lives under it (107 bytes at most)
    root.mkdir()
    results: dict[str, Any] = {}
    daemon = Daemon(root, "26000-26099", "26100-26199")
    try:
        for name in apps.split(","):
            results[name] = _deploys(daemon, root, name, redeploys)
    finally:
        daemon.stop()
    return results


def _deploys(daemon: Daemon, root: Path, name: str, redeploys: int) -> dict[str, Any]:
    files, text = APPS[name]
    _write(root / name, files, 0)
    started = time.monotonic()
    daemon.write(name, _desired(name, 0))
    status = daemon.wait(name, text.format(n=0), timeout=600)
    first = time.monotonic() - started
    again = []
    for n in range(1, redeploys + 1):
        _write(root / name, {k: v for k, v in files.items() if "{n}" in v}, n)
        started = time.monotonic()
        daemon.write(name, _desired(name, n))
        daemon.wait(name, text.format(n=n), timeout=300)
        again.append(time.monotonic() - started)
    print(f"apps: {name}: first deploy {first:.1f} s, redeploys "
          f"{', '.join(f'{s:.1f}' for s in again)} s", flush=True)  # fmt: skip
    return {"first": round(first, 2), "redeploy": summary(again, "s"), "app": status.get("app")}
