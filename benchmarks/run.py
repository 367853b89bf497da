"""Every benchmark figure in one run: ``make bench`` (``python -m benchmarks.run``).

Each figure runs against a real daemon, API and edge on loopback, bounded in count and time,
and is reported as a median and p99 over repeated runs, with its baseline (measured in the
same run) where one exists. Prints one table (Markdown), writes the figures as JSON to
``benchmarks/results/<date>.json`` and, with ``--write-md``, puts the table into
BENCHMARKS.md.

    python -m benchmarks.run                 # everything (about 15 minutes on 2 cores)
    python -m benchmarks.run --quick         # small counts: checks that every figure runs
    python -m benchmarks.run --only reaction,sse   # again, keeping the day's other figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    apps,
    deploy,
    edge,
    gitpush,
    many,
    reaction,
    ready,
    rollback,
    scale,
    sleep,
    sse,
    store,
    upgrade,
)
from benchmarks.harness import CADDY, REPO

FULL: dict[str, dict[str, Any]] = {
    "reaction": {"writes": 60, "fallback_writes": 10},
    "deploy": {"deploys": 10},
    "rollback": {"count": 20},
    "ready": {"deploys": 12},
    "scale": {"sites": 1000, "apps": 200, "idle": 60, "api_seconds": 10},
    "store": {"runs": 5},
    "sse": {"deploys": 15},
    "edge": {"sites": 100, "seconds": 10, "rounds": 3},
    "gitpush": {"pushes": 10},
    "apps": {"redeploys": 5},
    "upgrade": {"sites": 20, "seconds": 3.0},
    "many": {"sites": 10000, "idle": 60.0},
    "sleep": {"wakes_count": 20, "sites": 1000, "awake": 50, "rounds": 4, "seconds": 15.0},
}
QUICK: dict[str, dict[str, Any]] = {
    "reaction": {"writes": 5, "fallback_writes": 2},
    "deploy": {"deploys": 2, "files": 200, "size": 2_000},
    "rollback": {"count": 2},
    "ready": {"deploys": 2},
    "scale": {"sites": 10, "apps": 3, "idle": 2, "api_seconds": 1},
    "store": {"runs": 1, "small": 500, "large": 4},
    "sse": {"deploys": 2},
    "edge": {"sites": 3, "seconds": 1, "rounds": 1},
    "gitpush": {"pushes": 2},
    "apps": {"redeploys": 1, "apps": "flask"},
    "upgrade": {"sites": 2, "seconds": 1.0},
    "many": {"sites": 20, "idle": 2.0},
    "sleep": {
        "wakes_count": 1,
        "sites": 6,
        "awake": 3,
        "rounds": 1,
        "seconds": 3.0,
        "together": True,
    },
}
FIGURES: dict[str, Callable[..., dict[str, Any]]] = {
    "reaction": reaction.run,
    "deploy": deploy.run,
    "rollback": rollback.run,
    "ready": ready.run,
    "scale": scale.run,
    "store": store.run,
    "sse": sse.run,
    "edge": edge.run,
    "gitpush": gitpush.run,
    "apps": apps.run,
    "upgrade": upgrade.run,
    "many": many.run,
    "sleep": sleep.run,
}
MARK_START = "<!-- results: written by `python -m benchmarks.run --write-md` -->"
MARK_END = "<!-- end of results -->"


def _commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return head.stdout.strip() or "unknown"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    caddy = subprocess.run([CADDY, "version"], capture_output=True, text=True, check=False)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "caddy": caddy.stdout.split()[0] if caddy.stdout else "unknown",
        "commit": _commit(),
    }


# -- the table ---------------------------------------------------------------------------------


def _ms(figure: dict[str, Any] | None) -> tuple[str, str]:
    if not figure or "median" not in figure:
        return "-", "-"
    unit = figure.get("unit", "ms")
    return f"{figure['median']:g} {unit}", f"{figure['p99']:g} {unit}"


def _verdict(value: float | None, target: float | None) -> str:
    if value is None or target is None:
        return ""
    return "met" if value <= target else "**missed**"


def rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """(figure, measure, median, p99, baseline / note, target, verdict)."""
    out: list[tuple[str, ...]] = []

    def add(fig: str, what: str, figure: dict[str, Any] | None, note: str = "",
            target: str = "", verdict: str = "") -> None:  # fmt: skip
        median, p99 = _ms(figure)
        out.append((fig, what, median, p99, note, target, verdict))

    r = results.get("reaction")
    if r:
        for key, label in (
            ("rename", "file renamed into place"),
            ("in_place", "file written in place"),
        ):
            fig = r[key]
            verdict = "met" if fig["median"] <= 50 and fig["p99"] <= 200 else "**missed**"
            add(
                "1 reaction",
                f"{label} -> build job started",
                fig,
                "",
                "p50 <= 50 ms, p99 <= 200 ms",
                verdict,
            )
        add("1 reaction", "watcher off (resync every 1 s)", r["watcher_off"], "the fallback")
    d = results.get("deploy")
    if d:
        add("2 deploy", f"API deploy -> new content served ({d['files']} files, {d['mb']} MB)", d["ours"],
            f"hand baseline {d['baseline']['median']:g} ms; ratio {d['ratio']:g}x", "<= 1.3x",
            _verdict(d["ratio"], 1.3))  # fmt: skip
        for phase, label in (("to_build_start", "phase: API call -> build started"),
                             ("copy_hash", "phase: copy + hash (unchanged files linked)"),
                             ("sync", "phase: sync"), ("build", "phase: build job (all of it)"),
                             ("start_switch", "phase: start / switch"),
                             ("first_healthy_probe", "phase: first healthy probe")):  # fmt: skip
            if phase in d["phases"]:
                add("2 deploy", label, d["phases"][phase])
    rb = results.get("rollback")
    if rb:
        for kind in ("static", "process", "process_after_window", "docker"):
            fig = rb.get(kind, {})
            name = {"process": "process (within its window)",
                    "process_after_window": "process (window off: a start)"}.get(kind, kind)  # fmt: skip
            if "answer" in fig:
                add("3 rollback", f"{name}: API call -> answer", fig["answer"])
                target = {"process": 50, "process_after_window": 300}.get(kind)
                add(
                    "3 rollback",
                    f"{name}: API call -> first 200 with the target's content",
                    fig["served"],
                    "",
                    f"<= {target} ms" if target else "",
                    _verdict(fig["served"]["median"], target) if target else "",
                )
            elif fig:
                out.append(("3 rollback", kind, "-", "-", fig.get("skipped", ""), "", ""))
    rd = results.get("ready")
    if rd:
        fig = rd["process"]
        add(
            "4 ready",
            "app listens -> deploy reports ready",
            fig,
            "",
            "<= 50 ms",
            _verdict(fig["median"], 50),
        )
    sc = results.get("scale")
    if sc:
        label = f"{sc['static_sites']} static + {sc['process_sites']} process sites"
        out.append(
            (
                "5 scale",
                f"{label}: daemon start -> all serving",
                f"{sc['all_serving_s']} s",
                "",
                f"{sc['serving']} serving",
                "<= 30 s (1,200)",
                _verdict(sc["all_serving_s"], 30.0),
            )
        )
        if "cold_start" in sc:
            cold = sc["cold_start"]
            out.append(
                (
                    "5 scale",
                    f"{label}, deployed: cold start as after a reboot (daemon stopped, edge "
                    "and sites killed) -> all serving",
                    f"{cold['all_serving_s']} s",
                    "",
                    f"{cold['serving']} serving; {cold['processes_killed']} processes killed",
                    "<= 30 s (1,200)",
                    _verdict(cold["all_serving_s"], 30.0),
                )
            )
        out.append(
            (
                "5 scale",
                "RSS after convergence",
                f"daemon {sc['daemon_rss_mb']} MB",
                f"edge {sc['edge_rss_mb']} MB",
                "",
                "",
                "",
            )
        )
        idle = sc["idle_cpu_pct"]
        out.append(
            (
                "5 scale",
                f"idle CPU over {idle['seconds']} s",
                f"daemon {idle['daemon']} %",
                f"edge {idle['edge']} %",
                "",
                "daemon <= 1 %",
                _verdict(idle["daemon"], 1.0),
            )
        )
        resync = sc["full_resync_s"]
        out.append(
            (
                "5 scale",
                "reload (SIGHUP): every project checked, unchanged ones skipped",
                f"{resync[len(resync) // 2]} s",
                f"{max(resync)} s",
                f"{len(resync)} runs",
                "<= 1 s (1,000)",
                _verdict(resync[len(resync) // 2], 1.0),
            )
        )
        api = sc.get("api", {})
        floor = api.get("floor", {})
        servers = (("separate", "`reconciler api` (granian)"),
                   ("in_run", "API in `reconciler run` (waitress, in the daemon)"),
                   ("waitress", "same app on waitress, own process (before)"))  # fmt: skip
        for where, label in servers:
            for route, path in (
                ("production", "GET /api/projects/<id>/production"),
                ("projects", "GET /api/projects"),
            ):
                fig = api.get(where, {}).get(route)
                if fig and "p99_ms" in fig:
                    note = f"{fig['requests_per_s']:.0f} req/s; floor p99 {floor.get('p99_ms', '-')} ms"
                    out.append(
                        (
                            "5 scale",
                            f"{label}: {path}, 16 clients",
                            f"{fig['p50_ms']:g} ms",
                            f"{fig['p99_ms']:g} ms",
                            note,
                            "p99 <= 20 ms" if where == "separate" else "",
                            _verdict(fig["p99_ms"], 20) if where == "separate" else "",
                        )
                    )
        if floor:
            out.append(
                (
                    "5 scale",
                    "floor: one-route Flask app on waitress, 16 clients",
                    f"{floor['p50_ms']:g} ms",
                    f"{floor['p99_ms']:g} ms",
                    f"{floor['requests_per_s']:.0f} req/s",
                    "",
                    "",
                )
            )
    st = results.get("store")
    if st:
        for key in ("hash_large_files", "hash_small_files"):
            h = st[key]
            out.append(
                (
                    "6 store",
                    f"hash {h['files']} files, {h['mb']} MB",
                    f"{h['ours_mb_s']} MB/s",
                    "",
                    f"hashlib alone {h['plain_mb_s']} MB/s; ratio {h['ratio']}",
                    "",
                    "",
                )
            )
        stage = st["stage_10000_files"]
        add(
            "6 store",
            f"stage a {stage['files']}-file dist into an empty project",
            stage["into_empty_project"],
        )
        add("6 store", "stage it again with one file changed", stage["one_file_changed"])
    ev = results.get("sse")
    if ev:
        add(
            "7 SSE",
            "event recorded -> client receives it",
            ev["record_to_client"],
            f"{ev['received']} of {ev['events']} events",
        )
    eg = results.get("edge")
    if eg:
        cost = eg.get("churn_cost") or {}
        if cost:
            out.append(
                (
                    "8 edge",
                    f"{cost['sites']} sites added, then removed: failed requests to 2 others",
                    f"{cost['failed']} of {cost['requests']}",
                    "",
                    f"{cost['loads']} configuration loads",
                    "0",
                    "met" if cost["failed"] == 0 else "**missed**",
                )
            )
        for key, label in (
            ("throughput_access_logs_on", "on"),
            ("throughput_access_logs_off", "off"),
        ):
            tp = eg.get(key)
            if tp:
                out.append(
                    (
                        "8 edge",
                        f"static throughput, access logs {label}",
                        f"{tp['edge_rps']:.0f} req/s",
                        "",
                        f"plain caddy {tp['plain_rps']:.0f} req/s; ratio {tp['ratio']}",
                        ">= 0.95x" if label == "on" else "",
                        ("met" if tp["ratio"] >= 0.95 else "**missed**") if label == "on" else "",
                    )
                )
    gp = results.get("gitpush")
    if gp:
        add("9 git", "git push -> new commit served (hello-site, followed)", gp["served"],
            f"git push alone {gp['push']['median']:g} ms")  # fmt: skip
    up = results.get("upgrade")
    if up:
        add("11 upgrade", f"an edge with a server per site ({up['sites']} sites) taken over in "
            "place: failed requests", None, f"{up['failed']} of {up['requests']} "
            f"({', '.join(up['failures']) or 'none'}); {up['loads']} load; after one retry "
            f"as browsers do: {up.get('failed_after_retry', '?')}", "0",
            "met" if up["failed"] == 0 else "**missed**")  # fmt: skip
    _many(results.get("many"), add)
    _sleep(results.get("sleep"), add)
    for name, app in (results.get("apps") or {}).items():
        if not isinstance(app, dict) or "redeploy" not in app:
            continue  # when and at which commit it ran
        redeploy = app["redeploy"]
        add("10 apps", f"{name} from the smallest file: one-line change -> served", redeploy,
            f"first deploy with installs {app['first']:g} s", "<= 5 s",
            _verdict(redeploy["median"], 5))  # fmt: skip
    return out


def _many(figure: dict[str, Any] | None, add: Callable[..., None]) -> None:
    if not figure:
        return
    n, cold, cpu = figure["sites"], figure["cold_start"], figure["idle_cpu_pct"]
    add("12 many", f"{n} static sites: cold start -> all serving", None,
        f"{cold['all_serving_s']:g} s ({cold['serving']} serving; first pass over every "
        f"project {cold['first_pass_s']:g} s; first deploy of all "
        f"{figure['first_deploy']['seconds']:g} s)", "<= 120 s",
        "met" if cold["all_serving_s"] <= 120 and cold["serving"] == n else "**missed**")  # fmt: skip
    add("12 many", f"{n} static sites: daemon idle CPU over {cpu['seconds']:g} s", None,
        f"{cpu['daemon']} % (edge {cpu['edge']} %)", "<= 1 %",
        "met" if cpu["daemon"] <= 1 else "**missed**")  # fmt: skip
    rss = f"daemon {figure['daemon_rss_mb']} MB, edge {figure['edge_rss_mb']} MB"
    add("12 many", f"{n} static sites: RSS", None, rss, "<= 300 MB each",
        "met" if max(figure["daemon_rss_mb"], figure["edge_rss_mb"]) <= 300 else "**missed**")  # fmt: skip
    if reloads := figure.get("reload_s"):
        add("12 many", f"{n} static sites: reload (SIGHUP), unchanged ones skipped", None,
            f"{reloads[len(reloads) // 2]:g} s (of {len(reloads)}: {', '.join(map(str, reloads))})",
            "<= 10 s (10,000)", "met" if reloads[len(reloads) // 2] <= 10 else "**missed**")  # fmt: skip


def _sleep(figure: dict[str, Any] | None, add: Callable[..., None]) -> None:
    if not figure or "wake" not in figure:
        return
    wake, many = figure["wake"], figure["many"]
    add("13 sleep", "Flask on gunicorn asleep: a request -> its first byte", wake,
        f"{wake['n']} wakes", "p50 <= 1 s, p99 <= 2 s",
        _verdict(max(wake["median"] / 1000, wake["p99"] / 2000), 1))  # fmt: skip
    n, awake = many["sites"], many["awake_at_once"]
    add("13 sleep", f"{n} dynamic sites, {awake} awake at a time: first answer (a wake)",
        many["first_answer"], f"{many['requests']} requests over {many['rounds']} rounds, "
        f"{many['failed']} failed", "every request answered",
        "met" if many["failed"] == 0 else "**missed**")  # fmt: skip
    rss = many["daemon_rss_mb"] + many["edge_rss_mb"]
    add("13 sleep", f"{n} dynamic sites: daemon + edge RSS; processes of sleeping sites", None,
        f"{rss:.0f} MB (daemon {many['daemon_rss_mb']}, edge {many['edge_rss_mb']}); "
        f"{many['processes_of_sleeping_sites']} processes", "<= 500 MB; 0",
        "met" if rss <= 500 and many["processes_of_sleeping_sites"] == 0 else "**missed**")  # fmt: skip


def table(results: dict[str, Any]) -> str:
    head = ("figure", "measure", "median", "p99", "baseline / note", "target", "")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)


def write_md(results: dict[str, Any], info: dict[str, Any]) -> None:
    path = REPO / "BENCHMARKS.md"
    text = path.read_text()
    about = (
        f"Latest run {info['date']} at commit {info['commit']} (a figure rerun alone with "
        "`--only` keeps the day's others; each has its own `ran` and `commit` in the JSON): "
        f"{info['cpus']} x {info['cpu']}, "
        f"{info['memory_gib']} GiB, Linux {info['kernel']}, Python {info['python']}, "
        f"Caddy {info['caddy']}."
    )
    block = f"{MARK_START}\n\n{about}\n\n{table(results)}\n\n{MARK_END}"
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.S)
    path.write_text(
        pattern.sub(lambda _m: block, text) if pattern.search(text) else text + "\n" + block + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--only", default="", help=f"comma-separated: {','.join(FIGURES)}")
    parser.add_argument(
        "--out", default=None, help="JSON file (default: benchmarks/results/<date>.json)"
    )
    parser.add_argument("--write-md", action="store_true", help="put the table into BENCHMARKS.md")
    parser.add_argument(
        "--dir", default="/var/tmp", help="where the temporary dirs go (a real disk)"
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(FIGURES)
    unknown = set(chosen) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")
    sizes = QUICK if args.quick else FULL
    info = machine()
    out = (
        Path(args.out)
        if args.out
        else REPO / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}.json"
    )
    results: dict[str, Any] = {"machine": info, "quick": args.quick}
    if args.only and out.exists():  # some figures again: keep the day's others
        earlier = json.loads(out.read_text())
        if earlier.get("quick") == args.quick:
            results = {**earlier, "machine": info, "quick": args.quick}
    for name in chosen:
        started = time.monotonic()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=args.dir if os.path.isdir(args.dir) else None) as tmp:
            results[name] = FIGURES[name](Path(tmp), **sizes[name])
        results[name]["elapsed_s"] = round(time.monotonic() - started, 1)
        results[name]["ran"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results[name]["commit"] = info["commit"]
        print(f"   {name} done in {results[name]['elapsed_s']} s", file=sys.stderr, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nfigures written to {out}")
    if args.write_md:
        write_md(results, info)
    if not shutil.which("wrk"):
        print("note: wrk is not installed; the API latency figures were left out", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
