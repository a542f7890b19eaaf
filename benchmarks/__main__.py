"""``python -m benchmarks`` (``make bench``): the whole suite on the real local Kafka and ClickHouse, one table.

    python -m benchmarks [--events 200000|1000000] [--runs 3] [--skip peer,latency,memory,...]
    python -m benchmarks profile [--events 200000]     # py-spy on the worker under the throughput benchmark

Progress goes to stderr, the table to stdout; the table and the raw figures are also written to
``benchmarks/results/latest.{md,json}``. See benchmarks/README.md for what every figure measures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    Stat,
    delete_topics,
    machine,
    progress,
    run_id,
)

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("throughput", "two_workers", "limit", "faust", "peer", "latency", "memory", "idle")


def cross_check(cp: tuple[dict, dict], peer: dict, end_ms: int) -> tuple[int, int]:
    """(matching, compared) minute figures of the peer's closed windows against copulse's finals."""
    channel, active = cp
    compared = matching = 0
    for ws, ch, n in peer["channel_minutes"]:
        if ws + 60_000 <= end_ms:
            compared += 1
            matching += channel.get((ws, ch)) == n
    for ws, n in peer["active_minutes"]:
        if ws + 60_000 <= end_ms:
            compared += 1
            matching += active.get(ws) == n
    return matching, compared


def run_suite(args) -> int:
    from benchmarks import latency, throughput
    from benchmarks.load import preload

    skip = set(filter(None, args.skip.split(",")))
    rid = run_id()
    prefix = f"bench_{rid}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}_"))
    s: dict[str, Stat] = {}

    def stat(name: str) -> Stat:
        return s.setdefault(name, Stat())

    info: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "events": args.events, "consumers": args.consumers, "runs": args.runs,
                  "worker_env": args.worker_env}
    progress(f"machine: {info['machine']}")
    checks = []
    try:
        if not {"throughput", "limit", "faust", "peer"} <= skip:
            ds = preload(prefix, args.events, consumers=args.consumers, event_time_rate=args.event_time_rate)
            info["messages"] = ds.messages
            peer_ok = "peer" not in skip and throughput.quix_available()
            if "peer" not in skip and not peer_ok:
                progress("quixstreams is not installed (pip install -e '.[bench]'): peer skipped")
            for r in range(args.runs):
                progress(f"throughput round {r + 1}/{args.runs}")
                cp = lim = peer = None
                if "throughput" not in skip:
                    cp = throughput.run_copulse(ds, f"{prefix}_cp{r}", tmp, extra_env=args.worker_env)
                    stat("cp_rate").add(cp["rate"])
                    stat("cp_rate_committed").add(cp["rate_committed"])
                    stat("cp_cpu").add(cp["events_per_cpu_s"])
                    stat("cp_startup").add(cp["startup"])
                    stat("cp_rss").add(cp["peak_rss"] / 2**20)
                    stat("cp_cores").add(cp["cpu"] / cp["seconds"])
                    for name in ("kafka", "clickhouse"):
                        if f"cpu_{name}" in cp:
                            stat(f"cp_cpu_{name}").add(cp[f"cpu_{name}"] / cp["seconds"])
                    progress(f"  copulse: {cp['rate']:,.0f} events/s ({cp['seconds']:.1f} s, "
                             f"{cp['events_per_cpu_s']:,.0f} events per CPU-s, start-up {cp['startup']:.1f} s)")
                if "two_workers" not in skip:
                    two = throughput.run_copulse(ds, f"{prefix}_cp2w{r}", tmp, extra_env=args.worker_env, workers=2)
                    stat("cp2_rate").add(two["rate"])
                    stat("cp2_cpu").add(two["cpu"] / two["seconds"])
                    for name in ("kafka", "clickhouse"):
                        if f"cpu_{name}" in two:
                            stat(f"cp2_cpu_{name}").add(two[f"cpu_{name}"] / two["seconds"])
                    if cp:
                        stat("ratio_two").add(two["rate"] / cp["rate"])
                    progress(f"  two workers: {two['rate']:,.0f} events/s ({two['seconds']:.1f} s; cores busy: workers "
                             f"{two['cpu'] / two['seconds']:.2f}, kafka {two.get('cpu_kafka', 0) / two['seconds']:.2f}, "
                             f"clickhouse {two.get('cpu_clickhouse', 0) / two['seconds']:.2f})")
                if "limit" not in skip:
                    lim = throughput.run_limit(ds)
                    stat("limit_rate").add(lim["rate"])
                    fetch = throughput.run_limit(ds, decode=False)
                    stat("fetch_rate").add(fetch["rate"])
                    progress(f"  decode-only limit: {lim['rate']:,.0f} events/s; fetch only: {fetch['rate']:,.0f} events/s")
                    if cp:
                        stat("ratio_limit").add(cp["rate"] / lim["rate"])
                if "faust" not in skip:
                    noop = throughput.run_faust_noop(ds, f"{prefix}_fn{r}", tmp)
                    stat("faust_rate").add(noop["rate"])
                    progress(f"  faust no-op agent: {noop['rate']:,.0f} events/s")
                    if cp:
                        stat("ratio_faust").add(cp["rate_committed"] / noop["rate"])
                if peer_ok:
                    peer = throughput.run_peer(ds, f"{prefix}_qx{r}", tmp)
                    stat("peer_rate").add(peer["rate"])
                    stat("peer_startup").add(peer["startup"])
                    stat("peer_rss").add(peer["peak_rss"] / 2**20)
                    progress(f"  quix peer: {peer['rate']:,.0f} events/s ({peer['seconds']:.1f} s)")
                    if cp:
                        stat("ratio_peer").add(cp["rate_committed"] / peer["rate"])
                        matching, compared = cross_check(cp["minute_kpis"], peer, ds.end_ms)
                        checks.append((matching, compared))
        if "latency" not in skip:
            for emit, runs in ((1.0, args.runs), (5.0, args.latency_default_runs)):
                for r in range(runs):
                    progress(f"latency round {r + 1}/{runs} (emit interval {emit:g} s)")
                    res = latency.run_latency(f"{prefix}_lat{int(emit)}_{r}", tmp, rate=args.rate,
                                              seconds=args.latency_seconds,
                                              extra_env={"COPULSE_EMIT_INTERVAL_SECONDS": emit})
                    for kind in ("provisional", "final"):
                        if res[kind]:
                            for q in ("p50", "p95", "p99"):
                                stat(f"lat{emit:g}_{kind}_{q}").add(res[kind][q])
                            stat(f"lat{emit:g}_{kind}_n").add(res[kind]["n"])
                    stat(f"lat{emit:g}_rate").add(res["rate"])
                    stat(f"lat{emit:g}_unseen").add(res["unseen"])
                    progress(f"  provisional {res['provisional']}, final {res['final']}, {res['rate']:,.0f} events/s")
        if "memory" not in skip:
            import subprocess

            for n in args.memory_consumers:
                runs = args.runs if n < 1_000_000 else args.memory_1m_runs
                for r in range(runs):
                    progress(f"memory: {n:,} consumers per hour, run {r + 1}/{runs}")
                    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--consumers", str(n)],
                                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
                    m = json.loads(out.stdout.strip().splitlines()[-1])
                    stat(f"mem{n}_rss").add(m["rss_state"] / 2**20)
                    stat(f"mem{n}_bpm").add(m["bytes_per_membership"])
                    stat(f"mem{n}_bpc").add(m["bytes_per_consumer"])
        if "idle" not in skip:
            from benchmarks import idle

            progress("idle worker and the make-run demo load")
            info["idle"] = idle.measure(args.idle_seconds, args.demo_seconds, args.demo_rate, tmp)
    finally:
        progress("cleaning up topics")
        delete_topics(lambda t: t.startswith(prefix))
        shutil.rmtree(tmp, ignore_errors=True)
    table = render(info, s, checks, args)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(table + "\n")
    (RESULTS / "latest.json").write_text(json.dumps({"info": info, "checks": checks,
                                                     "stats": {k: v.values for k, v in s.items()}}, indent=1) + "\n")
    return 0


def render(info: dict, s: dict[str, Stat], checks: list, args) -> str:
    def f(name: str, spec: str = ",.0f", unit: str = "") -> str:
        return s[name].fmt(spec, unit) if name in s else "not run"

    def q3(prefix: str) -> str:
        if f"{prefix}_p50" not in s:
            return "not run"
        return " / ".join(f"{s[f'{prefix}_{q}'].median:.2f}" for q in ("p50", "p95", "p99")) + " s"

    rows = [
        ("**Throughput** (one worker process, pre-loaded topics)", "", ""),
        ("copulse end-to-end: first message -> all offsets committed and final rows of every window stored",
         f("cp_rate", unit=" ev/s"), ""),
        ("copulse, per CPU-second of the worker process", f("cp_cpu", unit=" ev/CPU-s"), ""),
        ("copulse first message -> all offsets committed", f("cp_rate_committed", unit=" ev/s"), ""),
        ("cores busy during the copulse run: worker / Kafka / ClickHouse",
         " / ".join(f(n, ".2f") for n in ("cp_cores", "cp_cpu_kafka", "cp_cpu_clickhouse")), "of 2"),
        ("two worker processes (one group), same data: end-to-end", f("cp2_rate", unit=" ev/s"), ""),
        ("two workers / one worker (same round)", f("ratio_two", ".2f", "x"), "reported"),
        ("cores busy during the two-worker run: workers / Kafka / ClickHouse",
         " / ".join(f(n, ".2f") for n in ("cp2_cpu", "cp2_cpu_kafka", "cp2_cpu_clickhouse")), "of 2"),
        ("copulse start-up (process start -> first message; not in the rate)", f("cp_startup", ".1f", " s"), ""),
        ("decode-only limit: aiokafka fetch + streams.codec.Decoder", f("limit_rate", unit=" ev/s"), ""),
        ("fetch only: aiokafka, no decode", f("fetch_rate", unit=" ev/s"), ""),
        ("Faust ceiling: the worker's Faust set-up, agent only acks; first message -> committed",
         f("faust_rate", unit=" ev/s"), ""),
        ("Quix Streams peer (events/min/channel + active consumers/min), first message -> committed",
         f("peer_rate", unit=" ev/s"), ""),
        ("copulse / decode-only limit (same round)", f("ratio_limit", ".3f", "x"), "reported (moonshot >= 0.25)"),
        ("copulse / peer, both first message -> committed (same round)", f("ratio_peer", ".2f", "x"), ">= 2"),
        ("copulse / Faust ceiling, both first message -> committed (same round)", f("ratio_faust", ".3f", "x"), ">= 0.6"),
        ("peer figures equal to copulse's (closed minutes, all rounds)",
         f"{sum(m for m, _ in checks)}/{sum(c for _, c in checks)}" if checks else "not run", "all"),
        ("**Latency** (steady load, event time = now, probes every 0.25 s)", "", ""),
    ]
    for emit in ("1", "5"):
        rows += [
            (f"emit interval {emit} s: load actually consumed", f(f"lat{emit}_rate", unit=" ev/s"), ""),
            (f"emit interval {emit} s: probe produced -> provisional row in ClickHouse, p50 / p95 / p99 (medians)",
             q3(f"lat{emit}_provisional"), "p99 <= 2 s"),
            (f"emit interval {emit} s: provisional p99 over runs", f(f"lat{emit}_provisional_p99", ".2f", " s"), ""),
            (f"emit interval {emit} s: window end -> final row per partition, p50 / p95 / p99 (incl. 30 s lateness)",
             q3(f"lat{emit}_final"), "p99 <= 32 s (30 s lateness + 2 s)"),
        ]
    rows.append(("**Memory** (engine fed directly in a subprocess; 1 m + 1 h windows, 8 slices)", "", ""))
    for n in args.memory_consumers:
        rows += [
            (f"{n:,} distinct consumers per hour: engine state (RSS growth)", f(f"mem{n}_rss", ",.1f", " MiB"), ""),
            (f"{n:,}/h: bytes per distinct consumer per window and slice", f(f"mem{n}_bpm", ",.0f", " B"), "<= 150 B"),
            (f"{n:,}/h: bytes per distinct consumer", f(f"mem{n}_bpc", ",.0f", " B"), ""),
        ]
    worker_rss = (f"real worker peak RSS, throughput run ({info['consumers']:,} consumers, "
                  f"{info.get('messages', 0):,} events)")
    rows.append((worker_rss, f("cp_rss", ",.0f", " MiB"), ""))
    rows.append(("Quix peer peak RSS, same run", f("peer_rss", ",.0f", " MiB"), ""))
    rows.append(("**Idle and demo load** (one worker; benchmarks/idle.py)", "", ""))
    if "idle" in info:
        from benchmarks import idle

        rows += idle.rows(info["idle"], args.demo_rate)
    else:
        rows.append(("idle worker and make-run demo", "not run", ""))
    lines = [
        f"copulse benchmarks — {info['started']}",
        f"machine: {info['machine']}",
        (f"data: {info.get('messages', 0):,} messages ({args.events:,} requested, {args.consumers:,} consumers, "
         f"{args.event_time_rate:,.0f} events per second of event time); figures: median [min–max] n=runs"),
        f"copulse throughput settings: defaults{''.join(f', {k}={v}' for k, v in args.worker_env.items())}",
        "",
        "| figure | value | target |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def run_profile(args) -> int:
    from benchmarks.load import preload
    from benchmarks.profile import format_summary, profile_run

    rid = run_id()
    prefix = f"bench_{rid}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}_"))
    try:
        ds = preload(prefix, args.events, consumers=args.consumers, event_time_rate=args.event_time_rate)
        # collapsed stacks (several MB) stay in a temporary directory, outside the repository
        res, summary = profile_run(ds, f"{prefix}_prof", tmp, Path(tempfile.mkdtemp(prefix="copulse-profile-")))
    finally:
        delete_topics(lambda t: t.startswith(prefix))
        shutil.rmtree(tmp, ignore_errors=True)
    text = format_summary(summary, f"worker under the throughput benchmark: {ds.messages:,} events, {res['rate']:,.0f} ev/s, "
                                   f"{res['events_per_cpu_s']:,.0f} ev per CPU-s")
    print(text)
    (RESULTS / "profile-latest.txt").write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="all", choices=("all", "profile"))
    parser.add_argument("--events", type=int, default=200_000, help="messages to pre-load (default 200000; try 1000000)")
    parser.add_argument("--consumers", type=int, default=20_000, help="simulated consumers in the data (default 20000)")
    parser.add_argument("--event-time-rate", type=float, default=1000.0, help="events per second of event time")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {','.join(PARTS)}")
    parser.add_argument("--rate", type=float, default=500.0,
                        help="latency: steady load in events/s (default 500; 1500 already saturates a worker on 2 shared cores)")
    parser.add_argument("--latency-seconds", type=float, default=60.0, help="latency: probing time per run")
    parser.add_argument("--latency-default-runs", type=int, default=1,
                        help="latency runs with the default 5 s emit interval (default 1)")
    parser.add_argument("--memory-consumers", type=lambda t: [int(x) for x in t.split(",")],
                        default=[10_000, 100_000, 1_000_000], help="distinct consumers per hour (default 10000,100000,1000000)")
    parser.add_argument("--worker-env", type=lambda t: dict(kv.split("=", 1) for kv in t.split(",") if kv), default={},
                        help="extra COPULSE_* settings of the copulse throughput runs, e.g. "
                             "COPULSE_SINK_FLUSH_SECONDS=5,COPULSE_SINK_BATCH_ROWS=20000 (default: none)")
    parser.add_argument("--memory-1m-runs", type=int, default=1, help="runs for >= 1M consumers (default 1)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle: seconds measured (default 60)")
    parser.add_argument("--demo-seconds", type=float, default=120.0, help="idle: demo load seconds measured (default 120)")
    parser.add_argument("--demo-rate", type=float, default=30.0, help="idle: demo load in events/s (default 30, as make run)")
    args = parser.parse_args(argv)
    return run_profile(args) if args.command == "profile" else run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
