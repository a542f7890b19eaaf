"""``python -m benchmarks.recovery``: how long a worker needs to process again after kill -9 and after a graceful
restart, and how big the state changelog it restores is.

    python -m benchmarks.recovery [--events 1000000] [--consumers 20000] [--kill-runs 2] [--graceful-runs 2]

On a private stack (``benchmarks/private_stack.py``; default ``/tmp/copulse-recovery-stack``, Kafka 29292,
ClickHouse 29300 — never the main stack):

1. ``copulse generate --rate 0`` pre-loads ``--events`` messages of ``--consumers`` consumers (valid only) into
   fresh input topics; event time spans ``events / --event-time-rate`` seconds (default 100/s: ~2.8 h for 1M)
   and ends a minute before the wall clock, so the newest 1 h window is still open and every consumer is in it;
2. one worker (default settings, ``--loglevel info``) consumes everything; done when its consumer group
   (``COPULSE_APP_ID``) has committed every input offset up to the end offsets;
3. the changelog ``<app_id>-state-changelog``: records (sum of end - beginning offsets) and bytes (segment
   files in the private stack's Kafka log dir);
4. per restart: kill -9 (or SIGTERM and wait for the exit), start a new worker, and right after it 18 probe
   events (one per input partition, event time = now). Timed from the new process's start (progress lines of
   the worker's log, polled every 20 ms, and the group's committed offsets, polled every 100 ms):

   * start-up: process start -> the source consumer asks to join its group (``(Re-)joining group <app_id>``);
   * group wait: -> ``Joined group '<app_id>'``; after kill -9 this is where the session timeout of the dead
     member (``COPULSE_KAFKA_SESSION_TIMEOUT_SECONDS``, default 30 s) is waited out;
   * restore: the worker's own figure in ``partitions [...] assigned: ... restored from the changelog in X s``;
   * assigned -> processing: from that line until every probe offset is committed (stored in ClickHouse,
     state persisted, offsets committed);
   * total: process start -> probes committed. Live state restored: the sum over partitions of
     ``partition N: state restored (W open windows, C consumers)``.

Progress on stderr, the table on stdout. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import common, private_stack
from benchmarks.common import Proc, progress, run_id

PARTITIONS = 6


class LogWatch:
    """Follows a worker log file; ``wait(pattern)`` returns the match and the time it was first seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = path.stat().st_size if path.exists() else 0
        self.lines: list[tuple[float, str]] = []
        self._buf = ""

    def poll(self) -> None:
        try:
            with open(self.path, errors="replace") as fh:
                fh.seek(self.pos)
                data = fh.read()
                self.pos = fh.tell()
        except FileNotFoundError:
            return
        if data:
            now = time.time()
            self._buf += data
            *complete, self._buf = self._buf.split("\n")
            self.lines += [(now, line) for line in complete]

    def find(self, pattern: re.Pattern, start: int = 0) -> tuple[int, float, re.Match] | None:
        for i in range(start, len(self.lines)):
            m = pattern.search(self.lines[i][1])
            if m:
                return i, self.lines[i][0], m
        return None

    def findall(self, pattern: re.Pattern) -> list[re.Match]:
        return [m for _, line in self.lines if (m := pattern.search(line))]


def worker(env: dict[str, str], log_path: Path) -> Proc:
    return Proc([sys.executable, "-m", "copulse.cli", "worker", "--loglevel", "info"], env, log_path)


def group_committed(admin, group: str) -> dict:
    try:
        if hasattr(admin, "list_group_offsets"):  # kafka-python >= 3
            offsets = admin.list_group_offsets(group).get(group) or {}
        else:
            offsets = admin.list_consumer_group_offsets(group)
    except Exception:  # noqa: BLE001 - group not there yet / coordinator moving
        return {}
    return {tp: o.offset for tp, o in offsets.items() if o.offset >= 0}


def end_offsets(consumer, tps) -> dict:
    return consumer.end_offsets(tps)


def changelog_size(stack: private_stack.PrivateStack, consumer, topic: str) -> tuple[int, int, int]:
    """(records between beginning and end offsets, bytes of its segment files, partitions)."""
    from kafka import TopicPartition

    parts = sorted(consumer.partitions_for_topic(topic) or ())
    tps = [TopicPartition(topic, p) for p in parts]
    if not tps:
        return 0, 0, 0
    begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    records = sum(end[tp] - begin[tp] for tp in tps)
    size = 0
    for p in parts:
        d = stack.kafka_data_dir() / f"{topic}-{p}"
        if d.is_dir():
            size += sum(f.stat().st_size for f in d.glob("*.log"))
    return records, size, len(tps)


def send_probes(bootstrap: str, settings, tag: int) -> int:
    """One valid event per input partition (event time = now), explicitly partitioned."""
    from benchmarks.load import marker_records, send_partitioned

    at_ms = int(time.time() * 1000)
    return send_partitioned(bootstrap, settings, [
        (p, event_type, dict(record, consumer_id=f"recovery-probe-{p}", event_id=f"{record['event_id']}-{tag}"))
        for p in range(PARTITIONS) for event_type, record in marker_records(at_ms, p, "web", settings.currency).items()])


JOINING = re.compile(r"\(Re-\)joining group (\S+)\s*$")
JOINED = re.compile(r"Joined group '([^']+)'")
ASSIGNED = re.compile(r"partitions \[([\d, ]*)\] assigned: (\d+) engines kept, (\d+) restored from the changelog in "
                      r"([\d.]+) s")
RESTORED = re.compile(r"partition (\d+): state restored \((\d+) open windows, (\d+) consumers\)")
LIVE_KEYS = re.compile(r"changelog partition (\d+): (\d+) records read, (\d+) live keys")


def wait_caught_up(admin, consumer, tps, group: str, proc: Proc, timeout: float, label: str) -> float:
    """Block until ``group`` committed every input offset up to the end offsets; returns the time it did."""
    ends = end_offsets(consumer, tps)
    total = sum(ends.values())
    deadline = time.time() + timeout
    last_report = 0.0
    while time.time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"worker exited ({label}):\n{proc.tail()}")
        committed = group_committed(admin, group)
        done = sum(min(committed.get(tp, 0), ends[tp]) for tp in tps)
        if done >= total:
            return time.time()
        if time.time() - last_report > 15:
            progress(f"{label}: {done:,} of {total:,} input offsets committed")
            last_report = time.time()
        time.sleep(0.1)
    raise RuntimeError(f"{label}: not caught up within {timeout:.0f} s:\n{proc.tail()}")


def restart(kind: str, proc: Proc, env, log_path: Path, admin, consumer, tps, group: str, settings,
            tag: int, timeout: float) -> tuple[Proc, dict]:
    """kill -9 (kind 'kill') or SIGTERM + wait ('graceful'), start a new worker, probe; returns its figures."""
    t_stop = time.time()
    if kind == "kill":
        os.killpg(proc.pid, signal.SIGKILL)
        proc.proc.wait()
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            progress("graceful stop took > 120 s: kill -9")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.proc.wait()
    exit_s = time.time() - t_stop
    proc._log.close()
    watch = LogWatch(log_path)
    new = worker(env, log_path)
    t0 = new.started
    probes = send_probes(common.KAFKA, settings, tag)
    ends = end_offsets(consumer, tps)
    marks: dict[str, float] = {}
    assigned = None
    deadline = t0 + timeout
    last_commit_poll = 0.0
    while time.time() < deadline:
        if not new.alive():
            raise RuntimeError(f"worker exited after the {kind} restart:\n{new.tail()}")
        watch.poll()
        for g, key in ((f"{group}-app", "app"), (group, "src")):
            if f"{key}-joining" not in marks:
                hit = next((t for t, line in watch.lines if (m := JOINING.search(line)) and m.group(1) == g), None)
                if hit:
                    marks[f"{key}-joining"] = hit
            if f"{key}-joined" not in marks:
                hit = next((t for t, line in watch.lines if (m := JOINED.search(line)) and m.group(1) == g), None)
                if hit:
                    marks[f"{key}-joined"] = hit
        if assigned is None:
            found = watch.find(ASSIGNED)
            if found:
                _, marks["assigned"], assigned = found
        if assigned is not None and time.time() - last_commit_poll >= 0.1:
            last_commit_poll = time.time()
            committed = group_committed(admin, group)
            if all(committed.get(tp, -1) >= ends[tp] for tp in tps):
                marks["processing"] = time.time()
                break
        time.sleep(0.02)
    else:
        raise RuntimeError(f"no processing within {timeout:.0f} s after the {kind} restart:\n{new.tail()}")
    watch.poll()
    restored = watch.findall(RESTORED)
    live = watch.findall(LIVE_KEYS)
    fig = {
        "kind": kind,
        "stop_s": exit_s,
        "startup_s": marks.get("app-joining", t0) - t0,
        "app_group_wait_s": span(marks, "app-joining", "app-joined"),
        "between_s": span(marks, "app-joined", "src-joining"),
        "group_wait_s": span(marks, "src-joining", "src-joined"),
        "restore_s": float(assigned.group(4)),
        "restored_partitions": int(assigned.group(3)),
        "kept_partitions": int(assigned.group(2)),
        "assigned_to_processing_s": marks["processing"] - marks["assigned"],
        "total_s": marks["processing"] - t0,
        "open_windows": sum(int(m.group(2)) for m in restored),
        "consumers": sum(int(m.group(3)) for m in restored),
        "live_keys": sum(int(m.group(3)) for m in live) if live else None,
        "records_read": sum(int(m.group(2)) for m in live) if live else None,
        "probes": probes,
    }
    progress(f"{kind} restart: total {fig['total_s']:.1f} s: start-up {fig['startup_s']:.1f}, Faust group wait "
             f"{fig['app_group_wait_s'] or 0:.1f}, -> source consumer {fig['between_s'] or 0:.1f}, source group wait "
             f"{fig['group_wait_s'] or 0:.1f}, restore {fig['restore_s']:.1f}; "
             f"assigned -> probes committed {fig['assigned_to_processing_s']:.1f} s; restored {fig['open_windows']} "
             f"open windows, {fig['consumers']:,} consumers")
    return new, fig


def span(marks: dict, a: str, b: str) -> float | None:
    return marks[b] - marks[a] if a in marks and b in marks else None


def fmt(v, spec=".1f", unit=" s") -> str:
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def table(info: dict, figs: list[dict]) -> str:
    out = [f"# copulse recovery ({info['started']})", "",
           f"Machine: {info['machine']}. Private stack, worker settings: {info['worker_env'] or 'defaults'} "
           f"(session timeout {info['session_timeout']:.0f} s).",
           f"Data: {info['messages']:,} messages, {info['consumers']:,} consumers, {info['span_h']:.1f} h of event time; "
           f"first catch-up {info['catchup_s']:.0f} s ({info['messages'] / info['catchup_s']:,.0f} ev/s).", "",
           f"Changelog `{info['changelog']}` after the catch-up: **{info['cl_records']:,} records**, "
           f"**{info['cl_bytes'] / 2**20:,.1f} MiB** of segment files ({info['cl_partitions']} partitions).", "",
           "| restart | stop | start-up | Faust group `<app_id>-app` wait | -> source consumer | source group "
           "`<app_id>` wait | restore (changelog) | assigned -> processing | **restart -> processing** "
           "| restored: open windows / consumers |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for f in figs:
        out.append(f"| {'kill -9' if f['kind'] == 'kill' else 'SIGTERM'} | {fmt(f['stop_s'])} | {fmt(f['startup_s'])} "
                   f"| {fmt(f['app_group_wait_s'])} | {fmt(f['between_s'])} | {fmt(f['group_wait_s'])} "
                   f"| {fmt(f['restore_s'])} | {fmt(f['assigned_to_processing_s'])} "
                   f"| **{fmt(f['total_s'])}** | {f['open_windows']:,} / {f['consumers']:,} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="messages to pre-load (default 1,000,000)")
    parser.add_argument("--consumers", type=int, default=20_000, help="simulated consumers (default 20,000)")
    parser.add_argument("--event-time-rate", type=float, default=100.0,
                        help="events per second of event time (default 100: 1M events span ~2.8 h)")
    parser.add_argument("--kill-runs", type=int, default=2, help="kill -9 restarts (default 2)")
    parser.add_argument("--graceful-runs", type=int, default=2, help="SIGTERM restarts (default 2)")
    parser.add_argument("--worker-env", default="", help="extra worker settings K=V,K=V (e.g. COPULSE_KAFKA_SESSION_TIMEOUT_SECONDS=10)")
    parser.add_argument("--catchup-timeout", type=float, default=3600, help="seconds allowed for the first catch-up")
    parser.add_argument("--keep", action="store_true", help="keep topics, database and logs")
    private_stack.add_arguments(parser, stack_dir="/tmp/copulse-recovery-stack", base_port=29292)
    args = parser.parse_args(argv)

    stack = private_stack.from_args(args)
    stack.apply()
    stack.up()
    rid = run_id()
    app_id = f"recovery_{rid}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{app_id}_"))
    extra = dict(kv.split("=", 1) for kv in args.worker_env.split(",") if kv)
    env = common.worker_env(app_id, app_id, tmp, **extra)
    settings = common.settings_from_env(env)
    log_path = tmp / "worker.log"
    info = {"machine": common.machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "consumers": args.consumers, "worker_env": args.worker_env,
            "session_timeout": settings.kafka_session_timeout_seconds, "changelog": f"{app_id}-state-changelog"}
    progress(f"machine: {info['machine']}; app id / group {app_id}; worker log {log_path}")
    proc = None
    figs: list[dict] = []
    rc = 0
    admin = consumer = None
    try:
        from kafka import KafkaConsumer, TopicPartition

        span_s = args.events / args.event_time_rate
        start = datetime.fromtimestamp(time.time() - 60 - span_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        progress(f"pre-loading {args.events:,} events ({args.consumers:,} consumers, {span_s / 3600:.1f} h of event time "
                 f"from {start}) with `copulse generate --rate 0`")
        t = time.time()
        gen = subprocess.run([sys.executable, "-m", "copulse.cli", "generate", "--count", str(args.events), "--rate", "0",
                              "--event-time-rate", str(args.event_time_rate), "--consumers", str(args.consumers),
                              "--start", start, "--seed", "1", "--quiet"],
                             env=dict(os.environ, **env), cwd=common.REPO_DIR)
        if gen.returncode:
            raise RuntimeError(f"copulse generate failed (exit {gen.returncode})")
        progress(f"pre-loaded in {time.time() - t:.0f} s")
        consumer = KafkaConsumer(bootstrap_servers=common.KAFKA, enable_auto_commit=False, client_id="recovery-watch")
        admin = common.kafka_admin()
        topics = list(settings.source_topics.values())
        tps = [TopicPartition(tp, p) for tp in topics for p in sorted(consumer.partitions_for_topic(tp) or ())]
        info["messages"] = sum(end_offsets(consumer, tps).values())
        info["span_h"] = span_s / 3600

        proc = worker(env, log_path)
        t0 = proc.started
        progress(f"worker started (pid {proc.pid}); waiting until group {app_id} committed all {info['messages']:,} offsets")
        done = wait_caught_up(admin, consumer, tps, app_id, proc, args.catchup_timeout, "catch-up")
        info["catchup_s"] = done - t0
        time.sleep(3)  # let a last flush / compaction settle; nothing new arrives
        info["cl_records"], info["cl_bytes"], info["cl_partitions"] = changelog_size(stack, consumer, info["changelog"])
        progress(f"caught up in {info['catchup_s']:.0f} s; changelog {info['cl_records']:,} records, "
                 f"{info['cl_bytes'] / 2**20:.1f} MiB")
        tag = 0
        plan = ["kill"] * args.kill_runs + ["graceful"] * args.graceful_runs
        for kind in plan:
            tag += 1
            proc, fig = restart(kind, proc, env, log_path, admin, consumer, tps, app_id, settings, tag,
                                timeout=600)
            figs.append(fig)
            time.sleep(5)  # steady state before the next stop
        info["cl_records_end"], info["cl_bytes_end"], _ = changelog_size(stack, consumer, info["changelog"])
        text = table(info, figs)
        text += (f"\n\nChangelog at the end: {info['cl_records_end']:,} records, "
                 f"{info['cl_bytes_end'] / 2**20:,.1f} MiB.\n")
        print(text)
    except Exception as exc:  # noqa: BLE001 - report, clean up, exit 1
        progress(f"FAILED: {exc}")
        if figs:
            print(table(info, figs) if "catchup_s" in info else figs)
        rc = 1
    finally:
        if proc is not None:
            proc.stop(timeout=60)
        if consumer is not None:
            consumer.close()
        if admin is not None:
            admin.close()
        private_stack.finish(stack, args, app_id, tmp, rc == 0, progress)
    return rc


if __name__ == "__main__":
    sys.exit(main())
