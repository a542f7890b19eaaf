"""What a worker costs when there is little or nothing to do: an idle worker, then the `make run` demo load.

    python -m benchmarks.idle [--idle-seconds 60] [--demo-seconds 120] [--rate 30]

1. **Idle**: a worker on empty topics, after its start-up: CPU share of one core over ``--idle-seconds`` and
   the records it wrote to its state changelog meanwhile (goal: <= 1 % of a core, nothing written).
2. **Demo**: ``copulse generate --rate 30 --consumers 1000`` (event time = now, as ``make run``): the worker's CPU
   share over ``--demo-seconds`` after a warm-up, KPI rows and raw events stored per second, and the warning
   or error lines in its log (goal: <= 5 % of a core, no warnings).

Runs against the local stack (``make up``) with its own app id, topics and database, removed afterwards.
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    OffsetWatch,
    Proc,
    cpu_seconds,
    delete_topics,
    drop_database,
    metric_sum,
    progress,
    run_id,
    scrape,
    settings_from_env,
    worker_env,
    worker_proc,
)


def changelog_end(topic: str) -> int:
    """Sum of the end offsets of a topic's partitions (0 while it does not exist)."""
    watch = OffsetWatch([topic])
    try:
        return watch.total
    finally:
        watch.close()


def warning_lines(log: Path, since_line: int) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()[since_line:]
    return [line for line in lines if "[WARNING]" in line or "[ERROR]" in line or "Traceback" in line]


def stored(metrics_port: int) -> tuple[float, float]:
    """(KPI rows, raw events) the worker has stored so far (its copulse_sink_rows_total)."""
    metrics = scrape(metrics_port)
    raw = sum(metric_sum(metrics, "copulse_sink_rows_total", table=t) for t in ("purchases", "usage_events", "feedback"))
    return metric_sum(metrics, "copulse_sink_rows_total", table="kpi_windows"), raw


def cpu_share(pid: int, seconds: float) -> float:
    """CPU share of one core used by ``pid`` over the next ``seconds``."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def measure(idle_seconds: float, demo_seconds: float, rate: float, tmp: Path) -> dict:
    app_id = f"bench_{run_id()}_idle"
    env = worker_env(app_id, app_id, tmp)
    settings = settings_from_env(env)
    changelog = f"{app_id}-state-changelog"
    log = tmp / f"{app_id}.log"
    worker = worker_proc(env, log)
    generator: Proc | None = None
    out: dict = {"app_id": app_id}
    try:
        deadline = time.time() + 120
        while not scrape(int(env["COPULSE_METRICS_PORT"])):
            if not worker.alive() or time.time() > deadline:
                raise RuntimeError(f"worker did not start:\n{worker.tail()}")
            time.sleep(0.5)
        time.sleep(15)  # group join, assignment, restore of empty partitions
        progress(f"idle: measuring the worker's CPU for {idle_seconds:.0f} s")
        written_before = changelog_end(changelog)
        out["idle_cpu_share"] = cpu_share(worker.pid, idle_seconds)
        out["idle_changelog_records"] = changelog_end(changelog) - written_before
        lines_before = len(log.read_text(errors="replace").splitlines())
        progress(f"demo: copulse generate --rate {rate:g} --consumers 1000; warm-up 20 s, then {demo_seconds:.0f} s")
        generator = Proc([sys.executable, "-m", "copulse.cli", "generate", "--rate", str(rate), "--consumers", "1000",
                          "--quiet"], env, tmp / f"{app_id}.generator.log")
        time.sleep(20)
        kpi0, raw0 = stored(int(env["COPULSE_METRICS_PORT"]))
        out["demo_cpu_share"] = cpu_share(worker.pid, demo_seconds)
        kpi1, raw1 = stored(int(env["COPULSE_METRICS_PORT"]))
        out["demo_kpi_rows_per_s"] = (kpi1 - kpi0) / demo_seconds
        out["demo_raw_events_per_s"] = (raw1 - raw0) / demo_seconds
        warnings = warning_lines(log, lines_before)
        out["demo_warning_lines"] = len(warnings)
        out["demo_warning_examples"] = warnings[:3]
        if not worker.alive():
            raise RuntimeError(f"worker died:\n{worker.tail()}")
    finally:
        if generator is not None:
            generator.stop()
        worker.stop()
        drop_database(settings.clickhouse["database"])
        delete_topics(lambda t: t.startswith(app_id))  # input, DLQ, late and changelog topics all start with it
    return out


def rows(out: dict, rate: float) -> list[tuple[str, str, str]]:
    """(figure, value, goal) rows, for this module's table and ``make bench``'s."""
    return [
        ("idle worker: CPU share of one core", f"{out['idle_cpu_share']:.2%}", "<= 1 %"),
        ("idle worker: state changelog records written", f"{out['idle_changelog_records']}", "0"),
        (f"demo ({rate:g} ev/s): worker CPU share of one core", f"{out['demo_cpu_share']:.2%}", "<= 5 %"),
        (f"demo ({rate:g} ev/s): raw events / KPI rows stored per s",
         f"{out['demo_raw_events_per_s']:.1f} / {out['demo_kpi_rows_per_s']:.1f}", ""),
        (f"demo ({rate:g} ev/s): warning or error lines in the worker log", f"{out['demo_warning_lines']}", "0"),
    ]


def table(out: dict, rate: float) -> str:
    lines = ["| figure | value | goal |", "| --- | --- | --- |"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows(out, rate)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--demo-seconds", type=float, default=120)
    parser.add_argument("--rate", type=float, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="copulse-idle-") as tmp:
        out = measure(args.idle_seconds, args.demo_seconds, args.rate, Path(tmp))
    print(table(out, args.rate))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
