"""Latency at a steady rate below saturation, event time = now, on a real worker.

Load: ``copulse generate --rate R`` (event time = wall clock) into the worker's own topics. Probe:

* **provisional**: every ``1 / PROBE_HZ`` s the driver produces one *probe* event (a valid usage
  ``feature_use``, event time = now) whose ``product_id`` is unique (``probe-<run>-<i>``), so it creates its own
  row in the ``product_id`` slice. Latency = time the probe row (1 m granularity) is first visible in
  ClickHouse (``kpi_windows``, polled every ``POLL`` s) - time just before the probe was handed to the producer
  (kafka-python, acks=all, linger 0). It includes: produce, fetch, processing, waiting for the next
  provisional emission (every ``COPULSE_EMIT_INTERVAL_SECONDS``) and the ClickHouse insert.
* **final**: for every 1 m window that ends while probing, per partition: time its final ``overall`` row is
  visible in ClickHouse - window end (wall clock = event time here). By design this includes the allowed
  lateness (the watermark is the highest event time minus ``COPULSE_ALLOWED_LATENESS_SECONDS``, 30 s by
  default): the figure minus the lateness is the pipeline's own delay.

Quantiles are per run; the table shows their median over runs with min and max.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import (
    KAFKA,
    Proc,
    ch_client,
    drop_database,
    metric_sum,
    progress,
    scrape,
    worker_env,
    worker_proc,
)

POLL = 0.025
PROBE_HZ = 4


def quantiles(values: list[float]) -> dict[str, float] | None:
    if len(values) < 2:
        return None
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": statistics.median(values), "p95": q[94], "p99": q[98], "max": max(values), "n": len(values)}


def probe_value(product_id: str, consumer: str, at: float) -> bytes:
    from streams.codec import encode

    return encode("usage", {
        "event_id": f"{product_id}-e", "consumer_id": consumer, "occurred_at": datetime.fromtimestamp(at, UTC),
        "channel": "web", "region": "DE", "segment": None, "session_id": f"{product_id}-s", "action": "feature_use",
        "feature": "search", "product_id": product_id, "category": "probe", "co_creation": False,
        "app_version": None,
    })


def run_latency(app_id: str, tmp: Path, *, rate: float, seconds: float, consumers: int = 10_000,
                extra_env: dict | None = None) -> dict:
    from kafka import KafkaProducer

    env = worker_env(app_id, app_id, tmp, **(extra_env or {}))
    lateness = float(env.get("COPULSE_ALLOWED_LATENESS_SECONDS", 30))
    port = int(env["COPULSE_METRICS_PORT"])
    worker = worker_proc(env, tmp / f"{app_id}.log")
    gen = None
    client = None
    producer = None
    try:
        deadline = time.time() + 120
        while metric_sum(scrape(port, timeout=1), "copulse_flushes_total") < 1:
            if not worker.alive() or time.time() > deadline:
                raise RuntimeError(f"worker not ready:\n{worker.tail()}")
            time.sleep(0.2)
        gen = Proc([sys.executable, "-m", "copulse.cli", "generate", "--rate", str(rate), "--consumers", str(consumers),
                    "--seed", "2", "--quiet"], env, tmp / f"{app_id}-generate.log")
        producer = KafkaProducer(bootstrap_servers=KAFKA, acks="all", linger_ms=0)
        client = ch_client(app_id)
        topic = env["COPULSE_TOPIC_USAGE"]
        time.sleep(5)  # warm-up: the generator's first messages, first flushes
        consumed0, t0 = metric_sum(scrape(port), "copulse_events_consumed_total"), time.time()
        progress(f"  latency {app_id}: probing for {seconds:.0f} s at ~{rate:,.0f} events/s")
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        start = time.time()
        end = start + seconds
        # 1 m windows ending while probing; their finals are awaited up to lateness + 30 s after the end
        ends = [w for w in range(int(start // 60 + 1) * 60, int(end) + 1, 60)]
        final_seen: dict[tuple[int, int], float] = {}
        partitions_of: dict[int, set[int]] = {}
        wait_until = max([end] + [w + lateness + 30 for w in ends])
        next_probe = start
        i = 0
        while True:
            now = time.time()
            if now < end and now >= next_probe:
                pid = f"probe-{app_id}-{i}"
                sent[pid] = time.time()
                producer.send(topic, key=f"probe-{i % 50}".encode(), value=probe_value(pid, f"probe-{i % 50}", sent[pid]))
                i += 1
                next_probe += 1 / PROBE_HZ
            pending = [p for p in sent if p not in seen]
            if pending:
                rows = client.execute("SELECT DISTINCT product_id FROM kpi_windows WHERE granularity_seconds = 60 "
                                      "AND slice = 'product_id' AND product_id IN %(ids)s", {"ids": tuple(pending)})
                t = time.time()
                for (pid,) in rows:
                    seen.setdefault(pid, t)
            due = [w for w in ends if now >= w + lateness - 2]
            if due:
                rows = client.execute("SELECT toUInt64(window_start) + 60, partition, max(is_final) FROM kpi_windows "
                                      "WHERE granularity_seconds = 60 AND slice = 'overall' AND window_start IN %(ws)s "
                                      "GROUP BY window_start, partition",
                                      {"ws": tuple(datetime.fromtimestamp(w - 60, UTC).replace(tzinfo=None) for w in due)})
                t = time.time()
                for w_end, partition, final in rows:
                    partitions_of.setdefault(w_end, set()).add(partition)
                    if final:
                        final_seen.setdefault((w_end, partition), t)
            if now >= end and len(seen) == len(sent) and all(
                    all((w, p) in final_seen for p in partitions_of.get(w, ())) and partitions_of.get(w) for w in ends):
                break
            if now > wait_until:
                progress(f"  latency {app_id}: gave up waiting ({len(sent) - len(seen)} probes unseen)")
                break
            if not worker.alive():
                raise RuntimeError(f"worker died:\n{worker.tail()}")
            time.sleep(POLL)
        consumed1, t1 = metric_sum(scrape(port), "copulse_events_consumed_total"), time.time()
        provisional = [seen[p] - sent[p] for p in seen]
        finals = [t - w for (w, _), t in final_seen.items()]
        return {"provisional": quantiles(provisional), "final": quantiles(finals), "rate": (consumed1 - consumed0) / (t1 - t0),
                "probes": len(sent), "unseen": len(sent) - len(seen), "lateness": lateness}
    finally:
        if producer is not None:
            producer.close()
        if gen is not None:
            gen.stop()
        worker.stop()
        if client is not None:
            client.disconnect()
        drop_database(app_id)
