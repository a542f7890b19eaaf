"""``python -m benchmarks.soak`` (``make soak``): the worker under faults while producers run, then an exact audit.

    python -m benchmarks.soak                      # 1,000,000 events, 10 kill -9, 2 x 60 s ClickHouse outages
    python -m benchmarks.soak --quick              # 100,000 events, 3 kill -9, 2 x 20 s outages (~5 min)

On a private stack (``benchmarks/private_stack.py``; default ``/tmp/copulse-soak-stack``, Kafka 29392,
ClickHouse 29400 — the broker restart and the ClickHouse outages never touch the main stack):

* ``copulse generate --invalid-fraction 0.05 --out FILE.jsonl`` paced at ``--rate`` (event time = wall clock),
  plus a few duplicates and late events, while these faults happen at random / fixed moments of the
  planned production time P: ``--kills`` kill -9 of a running worker (restarted at once), one broker restart
  (``stack.sh kafka-down`` / ``kafka-up``) at 0.4 P, two ClickHouse outages of ``--outage-seconds`` at 0.2 P and
  0.65 P, a second worker joining at 0.5 P and leaving (SIGTERM) at 0.85 P;
* worker settings: ``COPULSE_GRANULARITIES='["1m"]'``, lateness 10 s, idle timeout 8 s, session timeout 6 s,
  emit interval 1 s, so the last windows close about a minute after the input stops (1 h windows would wait
  an hour of wall clock); the oracle uses the same settings;
* then it waits until every input offset is committed and every window is final (or ``--settle-timeout``) and
  audits: **lost** = unique valid event ids sent (valid, duplicate and late lines of the JSONL) missing from
  the raw tables (``purchases``, ``usage_events``, ``feedback``); **double-counted** = window-slices whose
  final KPI row differs from the oracle (``tests/oracle.py`` over the JSONL) and the sum of the ``events``
  counter of slice ``overall`` stored vs expected; **DLQ** = unique source (topic, partition, offset) of
  ClickHouse ``rejected`` kind='dlq' and of the DLQ topic's headers vs invalid messages sent; duration; peak
  RSS of the worker processes (VmRSS sampled every second, and VmHWM).

Progress on stderr, one table on stdout (also ``benchmarks/results/soak-latest.md``). Exit 1 when anything was
lost or counted twice, when the DLQ does not hold exactly the malformed messages, or a worker died by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import common, private_stack
from benchmarks.common import Proc, free_port, progress, run_id

RESULTS = Path(__file__).resolve().parent / "results"
SOAK_SETTINGS = {
    "COPULSE_GRANULARITIES": '["1m"]',
    "COPULSE_ALLOWED_LATENESS_SECONDS": "10",
    "COPULSE_IDLE_TIMEOUT_SECONDS": "8",
    "COPULSE_KAFKA_SESSION_TIMEOUT_SECONDS": "6",
    "COPULSE_EMIT_INTERVAL_SECONDS": "1",
}
RAW_TABLES = ("purchases", "usage_events", "feedback")


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB; (0, 0) when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0, 0


class Worker:
    """One worker identity (A or B): its current process, restarts, and its RSS peak."""

    def __init__(self, name: str, env: dict[str, str], tmp: Path) -> None:
        self.name = name
        self.env = dict(env, COPULSE_METRICS_PORT=str(free_port()), COPULSE_WEB_PORT=str(free_port()))
        self.log_path = tmp / f"worker-{name}.log"
        self.proc: Proc | None = None
        self.starts = 0
        self.kills = 0
        self.unexpected_exits: list[str] = []
        self.refused_starts = 0  # start-up refused because ClickHouse/Kafka was down (exit 1 by design)
        self.peak_kib = 0
        self.wanted = False  # should be running

    def start(self) -> None:
        self.proc = Proc([sys.executable, "-m", "copulse.cli", "worker", "--loglevel", "info"], self.env, self.log_path)
        self.starts += 1
        self.wanted = True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def sample(self) -> None:
        if self.alive():
            rss, hwm = rss_kib(self.proc.pid)
            self.peak_kib = max(self.peak_kib, rss, hwm)

    def kill9(self) -> None:
        if self.alive():
            self.sample()
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.proc.wait()
            self.proc._log.close()
            self.kills += 1

    def stop(self) -> None:
        self.wanted = False
        if self.proc is not None:
            self.sample()
            self.proc.stop(timeout=60)

    def check(self) -> None:
        """Restart a worker that should run but exited by itself (and remember it: that is a finding)."""
        if self.wanted and self.proc is not None and not self.proc.alive():
            tail = self.proc.tail(25)
            self.proc._log.close()
            if "copulse worker:" in tail and "is unreachable" in tail:
                # worker_cli refuses to start while a dependency is down (exit 1): a supervisor retries
                self.refused_starts += 1
                progress(f"worker {self.name} refused to start (dependency down): "
                         f"{tail.splitlines()[-1][:160]}; retrying in 2 s")
                time.sleep(2)
                self.start()
                return
            self.unexpected_exits.append(f"exit code {self.proc.proc.returncode} at {time.strftime('%H:%M:%S')}:\n{tail}")
            progress(f"worker {self.name} EXITED BY ITSELF (code {self.proc.proc.returncode}); restarting. Log tail:\n{tail}")
            self.start()


class Sampler(threading.Thread):
    def __init__(self, workers: list[Worker]) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            for w in self.workers:
                w.sample()


def plan(rng: random.Random, duration: float, kills: int, outage: float) -> list[tuple[float, str]]:
    """(seconds after the producer started, action) in time order."""
    events = [(0.2 * duration, "ch-down"), (0.2 * duration + outage, "ch-up"),
              (0.4 * duration, "kafka-restart"),
              (0.5 * duration, "b-join"), (0.85 * duration, "b-leave"),
              (0.65 * duration, "ch-down"), (0.65 * duration + outage, "ch-up")]
    times: list[float] = []
    while len(times) < kills:
        t = rng.uniform(0.05 * duration, 0.95 * duration)
        if all(abs(t - u) >= min(8.0, duration / (3 * kills)) for u in times):
            times.append(t)
    events += [(t, "kill") for t in times]
    return sorted(events)


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def dlq_topic_sources(topic: str) -> tuple[int, int]:
    """(records in the DLQ topic, unique source topic/partition/offset in their headers)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=common.KAFKA, enable_auto_commit=False, auto_offset_reset="earliest",
                             client_id="soak-dlq-audit")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return 0, 0
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        consumer.seek_to_beginning(*tps)
        total, sources = 0, set()
        deadline = time.time() + 300
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.time() < deadline:
            for batch in consumer.poll(timeout_ms=1000, max_records=10000).values():
                for rec in batch:
                    total += 1
                    h = {k: v for k, v in rec.headers}
                    sources.add((h.get("copulse.source.topic"), h.get("copulse.source.partition"),
                                 h.get("copulse.source.offset")))
        return total, len(sources)
    finally:
        consumer.close()


def committed_all(admin, consumer, group: str, topics: list[str]) -> tuple[int, int]:
    from kafka import TopicPartition

    tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    ends = consumer.end_offsets(tps)
    try:
        offsets = admin.list_group_offsets(group).get(group) or {} if hasattr(admin, "list_group_offsets") \
            else admin.list_consumer_group_offsets(group)
    except Exception:  # noqa: BLE001 - coordinator moving, broker restarting
        offsets = {}
    done = sum(min(offsets[tp].offset, ends[tp]) for tp in tps if tp in offsets and offsets[tp].offset >= 0)
    return done, sum(ends.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="100,000 events at 1,000/s, 3 kill -9, 20 s outages (unless given explicitly)")
    parser.add_argument("--events", type=int, help="messages to produce (default 1,000,000; --quick 100,000)")
    parser.add_argument("--rate", type=float, help="messages per second = events per second of event time "
                        "(default 2,000; --quick 1,000)")
    parser.add_argument("--kills", type=int, help="kill -9 of a running worker (default 10; --quick 3)")
    parser.add_argument("--outage-seconds", type=float, help="each of the two ClickHouse outages (default 60; --quick 20)")
    parser.add_argument("--consumers", type=int, default=20_000, help="simulated consumers (default 20,000)")
    parser.add_argument("--invalid-fraction", type=float, default=0.05)
    parser.add_argument("--duplicate-fraction", type=float, default=0.01)
    parser.add_argument("--late-fraction", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=1, help="faults schedule and generator seed (default 1)")
    parser.add_argument("--settle-timeout", type=float, default=900,
                        help="seconds after the input stopped to wait for everything final (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep topics, database, JSONL and logs")
    private_stack.add_arguments(parser, stack_dir="/tmp/copulse-soak-stack", base_port=29392)
    args = parser.parse_args(argv)
    events = args.events or (100_000 if args.quick else 1_000_000)
    rate = args.rate or (1_000.0 if args.quick else 2_000.0)
    kills = args.kills if args.kills is not None else (3 if args.quick else 10)
    outage = args.outage_seconds if args.outage_seconds is not None else (20.0 if args.quick else 60.0)

    stack = private_stack.from_args(args)
    stack.apply()
    stack.up()
    from tests.worker_harness import final_kpis, settings_from_env

    rid = run_id()
    app_id = f"soak_{rid}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{app_id}_"))
    env = common.worker_env(app_id, app_id, tmp, **SOAK_SETTINGS)
    settings = settings_from_env(env)
    jsonl = tmp / "sent.jsonl"
    rng = random.Random(args.seed)
    duration = events / rate
    schedule = plan(rng, duration, kills, outage)
    progress(f"machine: {common.machine()}; app id / group {app_id}; logs and JSONL in {tmp}")
    progress(f"{events:,} messages at {rate:,.0f}/s (~{duration:.0f} s), {args.consumers:,} consumers, "
             f"{args.invalid_fraction:.0%} malformed; faults: " + ", ".join(f"{a}@{t:.0f}s" for t, a in schedule))
    a, b = Worker("A", env, tmp), Worker("B", env, tmp)
    sampler = Sampler([a, b])
    faults: Counter = Counter()
    fault_log: list[str] = []
    rc = 0
    gen = None
    t_start = time.time()
    ch = None
    try:
        a.start()
        sampler.start()
        time.sleep(5)  # A migrates the database, creates the topics and joins
        start_iso = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        gen_log = open(tmp / "generator.log", "wb")  # noqa: SIM115 - closed below
        gen = subprocess.Popen(
            [sys.executable, "-m", "copulse.cli", "generate", "--count", str(events), "--rate", str(rate),
             "--event-time-rate", str(rate), "--consumers", str(args.consumers), "--seed", str(args.seed),
             "--start", start_iso, "--invalid-fraction", str(args.invalid_fraction),
             "--duplicate-fraction", str(args.duplicate_fraction), "--late-fraction", str(args.late_fraction),
             "--out", str(jsonl)],
            env=dict(os.environ, **env), stdout=gen_log, stderr=subprocess.STDOUT, cwd=common.REPO_DIR,
            start_new_session=True)
        t_gen = time.time()
        pending = list(schedule)
        next_report = time.time() + 15
        while pending or gen.poll() is None:
            now = time.time() - t_gen
            for w in (a, b):
                w.check()
            if pending and pending[0][0] <= now:
                at, action = pending.pop(0)
                stamp = f"{now:6.1f}s {action}"
                if action == "kill":
                    victim = rng.choice([w for w in (a, b) if w.alive()] or [a])
                    victim.kill9()
                    victim.start()
                    stamp += f" worker {victim.name}"
                elif action == "ch-down":
                    stack.stack("clickhouse-down")
                elif action == "ch-up":
                    stack.stack("clickhouse-up")
                elif action == "kafka-restart":
                    stack.stack("kafka-down")
                    time.sleep(3)
                    stack.stack("kafka-up")
                    stamp += f" (down {time.time() - t_gen - now:.0f} s)"
                elif action == "b-join":
                    b.start()
                elif action == "b-leave":
                    b.stop()
                faults[action] += 1
                fault_log.append(stamp)
                progress(f"fault: {stamp}")
                continue
            if time.time() >= next_report:
                progress(f"producing: {sum(1 for _ in open(jsonl)) if jsonl.exists() else 0:,} messages acked and "
                         f"recorded; worker A rss {rss_kib(a.proc.pid)[0] / 1024:.0f} MiB" if a.alive() else "producing")
                next_report = time.time() + 15
            time.sleep(0.2)
        gen_rc = gen.wait()
        gen_log.close()
        t_produced = time.time()
        produce_s = t_produced - t_gen
        progress(f"producer done in {produce_s:.0f} s (exit {gen_rc}): "
                 + (tmp / "generator.log").read_text(errors="replace").strip().splitlines()[-1][:300])
        if b.wanted:
            b.stop()

        lines = read_jsonl(jsonl)
        by_expected = Counter(m["expected"] for m in lines if m.get("partition") is not None)
        failed = sum(1 for m in lines if m.get("partition") is None)
        sent = [{"type": m["type"], "partition": m["partition"], "offset": m["offset"], "event": m["event"]}
                for m in lines if m["expected"] != "invalid" and m.get("partition") is not None]
        invalid = {(m["topic"], m["partition"], m["offset"]) for m in lines
                   if m["expected"] == "invalid" and m.get("partition") is not None}
        valid_ids = {m["event"]["event_id"] for m in sent}
        progress(f"{len(lines):,} JSONL lines: {dict(by_expected)}, failed sends {failed}; computing the oracle")
        from copulse.settings import slice_dimensions
        from tests.oracle import classify, expected_kpis

        slices = [(s, slice_dimensions(s)) for s in settings.slices]
        want = expected_kpis(sent, settings.granularity_seconds, slices, settings.allowed_lateness_seconds)
        _, late_ev, dup_ev = classify(sent, settings.allowed_lateness_seconds * 1000, settings.granularity_seconds[0] * 1000)
        del lines

        ch = common.ch_client(settings.clickhouse["database"])
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(bootstrap_servers=common.KAFKA, enable_auto_commit=False, client_id="soak-audit")
        admin = common.kafka_admin()
        topics = list(settings.source_topics.values())
        deadline = time.time() + args.settle_timeout
        got, not_final, raw = {}, -1, -1
        t_converged = None
        stable, last_signature = 0, None
        while time.time() < deadline:
            a.check()
            done, total = committed_all(admin, consumer, app_id, topics)
            try:
                raw = sum(ch.execute(f"SELECT uniqExact(event_id) FROM {t}")[0][0] for t in RAW_TABLES)
                got, not_final = final_kpis(ch, settings.clickhouse["database"])
            except Exception as exc:  # noqa: BLE001 - keep waiting
                progress(f"audit query failed ({exc}); retrying")
                time.sleep(5)
                continue
            if done >= total and not_final == 0 and raw >= len(valid_ids) and got == want:
                t_converged = time.time()
                break
            # everything committed and final but not equal to the oracle: stop once nothing changes any more
            signature = (done, raw, not_final, hash(frozenset((k, tuple(v.items())) for k, v in got.items())))
            stable = stable + 1 if done >= total and not_final == 0 and signature == last_signature else 0
            last_signature = signature
            if stable >= 3:
                t_converged = time.time()
                progress("everything committed and final, unchanged for 30 s: auditing")
                break
            progress(f"settling: {done:,}/{total:,} offsets committed, {raw:,}/{len(valid_ids):,} events raw, "
                     f"{not_final} window-slices not final, {sum(1 for k in set(want) | set(got) if want.get(k) != got.get(k)):,} "
                     f"differ from the oracle")
            time.sleep(10)
        consumer.close()
        admin.close()

        # ----------------------------------------------------------------- audit
        stored_ids: set[str] = set()
        for t in RAW_TABLES:
            stored_ids.update(r[0] for r in ch.execute(f"SELECT DISTINCT event_id FROM {t}"))
        lost = len(valid_ids - stored_ids)
        extra = len(stored_ids - valid_ids)
        wrong = [k for k in set(want) | set(got) if want.get(k) != got.get(k)]
        ev_want = sum(v["events"] for k, v in want.items() if k[2] == "overall")
        ev_got = sum(v["events"] for k, v in got.items() if k[2] == "overall")
        rejected = dict(ch.execute("SELECT kind, uniqExact(topic, partition, offset) FROM rejected GROUP BY kind"))
        rejected_rows = dict(ch.execute("SELECT kind, count() FROM rejected GROUP BY kind"))
        dlq_ch = {(t, p, o) for t, p, o in ch.execute("SELECT DISTINCT topic, partition, offset FROM rejected WHERE kind = 'dlq'")}
        dlq_records, dlq_unique = dlq_topic_sources(settings.topic_dlq)
        a.sample()
        a.stop()
        sampler.stopped.set()
        total_s = (t_converged or time.time()) - t_gen
        exits = a.unexpected_exits + b.unexpected_exits
        checks = {
            "lost": lost == 0,
            "double": not wrong and ev_got == ev_want,
            "dlq": rejected.get("dlq", 0) == len(invalid) and dlq_unique == len(invalid) and dlq_ch == invalid,
            "exits": not exits,
            "converged": t_converged is not None,
        }
        rows = [
            ("messages sent (acked)", f"{sum(by_expected.values()):,}: valid {by_expected['valid']:,}, malformed "
             f"{by_expected['invalid']:,}, duplicate {by_expected['duplicate']:,}, late {by_expected['late']:,}; "
             f"failed sends {failed}", ""),
            ("**events lost** (unique valid event ids sent, not in the raw tables)",
             f"**{lost:,}** of {len(valid_ids):,} (ids in the raw tables not sent: {extra:,})", "0"),
            ("**double-counted**: window-slices differing from the oracle",
             f"**{len(wrong):,}** of {len(want):,} (not final: {not_final})", "0"),
            ("`events` of slice overall, stored vs expected",
             f"{ev_got:,} vs {ev_want:,} (diff {ev_got - ev_want:+,})", "equal"),
            ("**DLQ** vs malformed sent", f"**{rejected.get('dlq', 0):,}** unique in ClickHouse `rejected` "
             f"({rejected_rows.get('dlq', 0):,} rows), DLQ topic {dlq_unique:,} unique sources ({dlq_records:,} "
             f"records) vs **{len(invalid):,}** malformed; same positions: {dlq_ch == invalid}", "equal"),
            ("late: `rejected` kind=late vs oracle", f"{rejected.get('late', 0):,} vs {len(late_ev):,} "
             f"(duplicates dropped per oracle: {len(dup_ev):,})", ""),
            ("faults", f"{a.kills + b.kills} kill -9 (A {a.kills}, B {b.kills}), {faults['kafka-restart']} broker restart, "
             f"{faults['ch-down']} ClickHouse outages of {outage:.0f} s, B joined {faults['b-join']} / left "
             f"{faults['b-leave']}", ""),
            ("worker exits nobody asked for", f"{len(exits)} (plus {a.refused_starts + b.refused_starts} start-ups "
             "refused with exit 1 while ClickHouse/Kafka was down, retried every 2 s)", "0"),
            ("duration", f"producing {produce_s:.0f} s, producer start -> everything final "
             f"{'%.0f s' % total_s if t_converged else 'NOT CONVERGED within the settle timeout'}", ""),
            ("peak RSS", f"worker A {a.peak_kib / 1024:.0f} MiB, worker B {b.peak_kib / 1024:.0f} MiB", ""),
        ]
        text = [f"# copulse soak ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))})", "",
                f"Machine: {common.machine()}. {events:,} messages at {rate:,.0f}/s, {args.consumers:,} consumers, "
                f"worker settings {SOAK_SETTINGS}. Fault times (s after the producer started): "
                + "; ".join(fault_log), "", "| figure | value | must be |", "|---|---|---|"]
        text += [f"| {f} | {v} | {m} |" for f, v, m in rows]
        verdict = "PASS" if all(checks.values()) else "FAIL: " + ", ".join(k for k, ok in checks.items() if not ok)
        text += ["", f"**{verdict}**"]
        if exits:
            text += ["", "Unexpected exits:", *[f"```\n{e}\n```" for e in exits]]
        if wrong:
            text += ["", "Some differing window-slices (key: stored / expected `events`):"]
            for k in sorted(wrong)[:8]:
                text.append(f"* {k}: {(got.get(k) or {}).get('events')} / {(want.get(k) or {}).get('events')}")
        out = "\n".join(text)
        print(out)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soak-latest.md").write_text(out + "\n")
        rc = 0 if all(checks.values()) else 1
    except Exception as exc:  # noqa: BLE001 - report, clean up, exit 1
        import traceback

        traceback.print_exc()
        progress(f"FAILED: {exc!r}")
        rc = 1
    finally:
        sampler.stopped.set()
        if gen is not None and gen.poll() is None:
            os.killpg(gen.pid, signal.SIGTERM)
        for w in (a, b):
            w.wanted = False
            if w.proc is not None:
                w.proc.stop(timeout=60)
        if ch is not None:
            ch.disconnect()
        # a ClickHouse or Kafka left down by an interrupted run comes back up (this is the private stack)
        stack.stack("up", "kafka", "clickhouse", check=False)
        private_stack.finish(stack, args, app_id, tmp, rc == 0, progress)
    return rc


if __name__ == "__main__":
    sys.exit(main())
