"""The first process of a site unit that runs as its own user (``reconciler-site@.service``),
and of a build unit (``reconciler-build@.service``, with ``/run/reconciler-build`` as the
directory it reads: ``source/`` read-write instead of ``release/``, ``app.log`` the output).

systemd starts it as the unit's dynamic user in a mount namespace where the data dir is an
empty tmpfs and only the site's own pieces are bound in, under ``/run/reconciler-site``:

- ``release/`` (read-only): the site's release, and nothing of any other site;
- ``run.json`` (read-only): the command, its working directory and environment, written by
  the daemon;
- ``app.log``: the release's log, opened here for appending.

It reads what to run, points its output at the log and replaces itself with the command (so
the unit's main process is the site's). Nothing here runs as root: every file it opens is
opened as the site's user.
"""

from __future__ import annotations

import json
import os
import sys

SITE_ROOT = "/run/reconciler-site"


def main(root: str | None = None) -> int:
    root = root or SITE_ROOT
    try:
        with open(os.path.join(root, "run.json"), "rb") as fh:
            run = json.loads(fh.read())
        argv, cwd, env = run["argv"], run["cwd"], run["env"]
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise ValueError("argv must be a non-empty list of strings")
        log = os.open(os.path.join(root, "app.log"), os.O_WRONLY | os.O_APPEND)
    except (OSError, ValueError, KeyError) as exc:
        print(f"reconciler-site: cannot read what to run: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        os.chdir(cwd)
        # argv comes from the daemon's run.json (the desired file's start command under
        # /bin/sh -c, as every process-runtime instance runs), read with the site's own rights
        os.execve(argv[0], argv, {str(k): str(v) for k, v in env.items()})  # noqa: S606
    except OSError as exc:
        print(f"reconciler-site: cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached: execve replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
