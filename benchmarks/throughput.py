"""End-to-end throughput of one copulse worker process, the decode-only limit and the Quix Streams peer,
all on the same pre-loaded topics (benchmarks/load.py), in the same invocation.

copulse (``run_copulse``): a real ``copulse worker`` subprocess with its own consumer group, changelog,
ClickHouse database and ports and otherwise default settings (KPIs, slices, granularities, allowed lateness,
idle timeout, emit interval, flush and batch sizes). The end markers of benchmarks/load.py close every window
of the data by event time. Times (wall clock, polled every ``POLL`` s, so ± that much):

* ``first``: the first message consumed (the worker's ``copulse_events_consumed_total`` > 0; polled every
  50 ms during start-up only);
* ``committed``: every input offset committed by the worker's consumer group (Kafka);
* ``final``: final KPI rows of every window of the data stored: in ClickHouse, the final rows of slice
  ``overall`` sum to the number of data messages for both granularities (every event is in exactly one 1 m
  and one 1 h window);
* ``done`` = max(committed, final). **events/s = messages / (done - first)**. Start-up (process start ->
  first message: imports, migrations, topic checks, consumer group join, changelog recovery) is reported
  separately and not in the rate.

The decode-only limit and the peer are timed from their first message to their last message handled
(limit) or to all input offsets committed by their group (peer, which commits after its state and sink are
flushed, like copulse's acks).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    CLICKHOUSE,
    KAFKA,
    OffsetWatch,
    Proc,
    ch_client,
    drop_database,
    metric_sum,
    progress,
    scrape,
    worker_env,
    worker_proc,
    cpu_seconds,
    rss_bytes,
    stack_pids,
)
from benchmarks.load import Dataset

POLL = 0.1


def run_copulse(ds: Dataset, app_id: str, tmp: Path, *, timeout: float = 900, extra_env: dict | None = None,
                on_first=None, workers: int = 1) -> dict:
    """``workers`` worker processes of one app (one consumer group) on the data; CPU is their sum, RSS the
    highest peak of one of them."""
    envs = []
    for i in range(workers):
        env = worker_env(app_id, ds.prefix, tmp, COPULSE_PARTITIONS=ds.partitions, **(extra_env or {}))
        env["COPULSE_WORKER_DATA_DIR"] += f"-{i}"
        envs.append(env)
    ports = [int(env["COPULSE_METRICS_PORT"]) for env in envs]
    watch = OffsetWatch(ds.topics)
    assert watch.total == ds.messages, (watch.total, ds.messages)
    procs = [worker_proc(env, tmp / f"{app_id}-{i}.log") for i, env in enumerate(envs)]
    out: dict = {"app_id": app_id, "pid": procs[0].pid, "workers": workers}
    client = None

    def check_alive(what: str) -> None:
        for worker in procs:
            if not worker.alive():
                raise RuntimeError(f"worker died{what}:\n{worker.tail()}")

    def consumed() -> float:
        return sum(metric_sum(scrape(port, timeout=1), "copulse_events_consumed_total") for port in ports)

    try:
        deadline = time.time() + 120
        while True:
            check_alive(" during start-up")
            if time.time() > deadline:
                raise RuntimeError(f"workers consumed nothing in 120 s:\n{procs[0].tail()}")
            if consumed() > 0:
                break
            time.sleep(0.05)
        services = stack_pids()
        first, cpu_first = time.time(), sum(cpu_seconds(w.pid) for w in procs)
        service_first = {name: cpu_seconds(pid) for name, pid in services.items()}
        out["startup"] = first - min(w.started for w in procs)
        if on_first:
            on_first(procs[0].pid)
        client = ch_client(app_id)
        committed = final = None
        peak = 0
        deadline = first + timeout
        query = ("SELECT granularity_seconds, sum(events) FROM kpi_windows WHERE slice = 'overall' AND is_final = 1 "
                 "GROUP BY granularity_seconds")
        next_report = first + 5
        while committed is None or final is None:
            check_alive("")
            now = time.time()
            if now > deadline:
                raise RuntimeError(f"not done after {timeout} s (committed={committed}, final={final})")
            peak = max(peak, *(rss_bytes(w.pid) for w in procs))
            if committed is None:
                n = watch.committed(app_id)
                if n >= watch.total:
                    committed = time.time()
                elif now >= next_report:
                    progress(f"  copulse {app_id}: {n:,}/{watch.total:,} committed after {now - first:.0f} s")
                    next_report = now + 5
            if final is None:
                sums = dict(client.execute(query))
                if sums and all(sums.get(g, 0) >= ds.data_events for g in (60, 3600)):
                    final = time.time()
            time.sleep(POLL)
        done = max(committed, final)
        cpu_done = sum(cpu_seconds(w.pid) for w in procs)
        for name, pid in services.items():  # what the broker and ClickHouse spent meanwhile, on the same cores
            out[f"cpu_{name}"] = cpu_seconds(pid) - service_first[name]
        out.update(first=first, committed=committed, final=final, done=done, seconds=done - first,
                   rate=ds.messages / (done - first), cpu=cpu_done - cpu_first, peak_rss=peak,
                   rate_committed=ds.messages / (committed - first))
        out["events_per_cpu_s"] = ds.messages / out["cpu"] if out["cpu"] > 0 else None
        scraped = [scrape(port) for port in ports]
        out["folded"] = sum(metric_sum(m, "copulse_events_processed_total", outcome="folded") for m in scraped)
        out["not_folded"] = sum(metric_sum(m, "copulse_events_processed_total") for m in scraped) - out["folded"]
        out["dead_lettered"] = sum(metric_sum(m, "copulse_events_dead_lettered_total") for m in scraped)
        out["kpi_rows"] = client.execute("SELECT count() FROM kpi_windows")[0][0]
        out["minute_kpis"] = copulse_minute_kpis(app_id)
        if out["folded"] != ds.messages or out["dead_lettered"]:
            progress(f"  warning: {app_id} folded {out['folded']:.0f} of {ds.messages} messages "
                     f"({out['not_folded']:.0f} not folded, {out['dead_lettered']:.0f} dead-lettered)")
        return out
    finally:
        for worker in procs:
            worker.stop()
        if client is not None:
            client.disconnect()
        watch.close()
        drop_database(app_id)


def run_limit(ds: Dataset, *, decode: bool = True, timeout: float = 600) -> dict:
    argv = [sys.executable, "-m", "benchmarks.limit", "--bootstrap", KAFKA, "--topics", ",".join(ds.topics),
            "--expect", str(ds.messages)]
    if not decode:
        argv.append("--no-decode")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"limit consumer failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    seconds = res["last"] - res["first"]
    return {"seconds": seconds, "rate": res["messages"] / seconds, "cpu": res["cpu"],
            "events_per_cpu_s": res["messages"] / res["cpu"] if res["cpu"] else None}


def run_faust_noop(ds: Dataset, app_id: str, tmp: Path, *, timeout: float = 600) -> dict:
    """Faust's ceiling with the worker's set-up and an agent that only acks (benchmarks/faust_noop.py)."""
    from benchmarks.common import free_port

    first_file = tmp / f"{app_id}.first"
    argv = [sys.executable, "-m", "benchmarks.faust_noop", "--bootstrap", KAFKA, "--topics", ",".join(ds.topics),
            "--app-id", app_id, "--first-file", str(first_file), "--web-port", str(free_port()),
            "--datadir", str(tmp / app_id)]
    watch = OffsetWatch(ds.topics)
    proc = Proc(argv, {}, tmp / f"{app_id}.log")
    try:
        deadline = time.time() + timeout
        while not watch.all_committed(app_id):
            if not proc.alive():
                raise RuntimeError(f"faust no-op agent died:\n{proc.tail()}")
            if time.time() > deadline:
                raise RuntimeError(f"faust no-op agent not done after {timeout} s")
            time.sleep(POLL)
        done = time.time()
        first = float(first_file.read_text())
        return {"seconds": done - first, "rate": ds.messages / (done - first), "startup": first - proc.started}
    finally:
        proc.stop()
        watch.close()


def quix_available() -> bool:
    try:
        import quixstreams  # noqa: F401
    except ImportError:
        return False
    return True


def run_peer(ds: Dataset, group: str, tmp: Path, *, timeout: float = 900) -> dict:
    first_file = tmp / f"{group}.first"
    argv = [sys.executable, "-m", "benchmarks.quix_peer", "--bootstrap", KAFKA, "--topics", ",".join(ds.topics),
            "--group", group, "--database", group, "--state-dir", str(tmp / f"{group}-state"),
            "--first-file", str(first_file), "--ch-port", str(CLICKHOUSE["port"])]
    watch = OffsetWatch(ds.topics)
    proc = Proc(argv, {"PYTHONWARNINGS": "ignore"}, tmp / f"{group}.log")
    try:
        deadline = time.time() + timeout
        next_report = time.time() + 5
        peak = 0
        while True:
            if not proc.alive():
                raise RuntimeError(f"peer died:\n{proc.tail()}")
            now = time.time()
            if now > deadline:
                raise RuntimeError(f"peer not done after {timeout} s:\n{proc.tail()}")
            peak = max(peak, rss_bytes(proc.pid))
            n = watch.committed(group)
            if n >= watch.total:
                done = time.time()
                break
            if now >= next_report:
                progress(f"  quix {group}: {n:,}/{watch.total:,} committed")
                next_report = now + 5
            time.sleep(POLL)
        first = float(first_file.read_text())
        client = ch_client()
        try:
            channel = client.execute(f"SELECT window_start, channel, max(events) FROM `{group}`.peer_channel_minute "
                                     "GROUP BY window_start, channel")
            active = client.execute(f"SELECT window_start, max(active_consumers) FROM `{group}`.peer_active_minute "
                                    "GROUP BY window_start")
        finally:
            client.disconnect()
        return {"first": first, "done": done, "seconds": done - first, "rate": ds.messages / (done - first),
                "startup": first - proc.started, "peak_rss": peak, "channel_minutes": channel, "active_minutes": active}
    finally:
        proc.stop()
        watch.close()
        drop_database(group)


def copulse_minute_kpis(database: str) -> tuple[dict, dict]:
    """{(window_start_ms, channel): events} and {window_start_ms: active_consumers} from copulse's final rows
    (for cross-checking the peer); call before the database is dropped."""
    client = ch_client(database)
    try:
        ch = client.execute("SELECT toUInt64(window_start) * 1000, channel, sum(events) FROM kpi_windows "
                            "WHERE granularity_seconds = 60 AND slice = 'channel' AND is_final = 1 "
                            "GROUP BY window_start, channel")
        act = client.execute("SELECT toUInt64(window_start) * 1000, sum(active_consumers) FROM kpi_windows "
                             "WHERE granularity_seconds = 60 AND slice = 'overall' AND is_final = 1 GROUP BY window_start")
    finally:
        client.disconnect()
    return {(w, c): n for w, c, n in ch}, dict(act)
