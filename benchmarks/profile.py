"""Profile the worker under the throughput benchmark with py-spy (sampling, attached to the worker
subprocess from its first consumed message until the run is done) and summarise the collapsed stacks.

    python -m benchmarks profile [--events 200000]

Prints the top functions by own time ("self": the sample's innermost frame) and by inclusive time
("total": anywhere on the stack), as shares of all samples of the worker's threads that were not idle.
The collapsed stacks are kept (path printed on stderr) for flame graphs (e.g. inferno / flamegraph.pl).
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
from pathlib import Path

from benchmarks.common import progress

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


class PySpy:
    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        exe = shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
        self.out = out
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                                      "--output", str(out), "--nonblocking", "--threads"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.replace(str(Path(__file__).resolve().parents[1]) + "/", "")
    return f"{m.group('func')} ({path})"


def stacks(collapsed: Path):
    """(stack, samples) of every line of py-spy's raw (collapsed) output."""
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack, int(count)


def summarise(collapsed: Path, top: int = 15) -> dict:
    """{'samples', 'self': [(share, name)], 'total': [(share, name)]} from py-spy's raw output."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    samples = 0
    for stack, n in stacks(collapsed):
        frames = [_short(f) for f in stack.split(";")[1:]]  # first element is the thread
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return {
        "areas": areas(collapsed),
        "samples": samples,
        "self": [(c / samples, f) for f, c in own.most_common(top)] if samples else [],
        "total": [(c / samples, f) for f, c in incl.most_common(top + 10)] if samples else [],
    }


#: areas of the worker, first match on the stack wins (in this order)
AREAS = (
    ("idle (select)", ("EpollSelector.select", "_PollLikeSelector.select")),
    ("ClickHouse store (sink thread)", ("ClickHouseSink.store",)),
    ("changelog records (persist)", ("ChangelogStore.write", "Pipeline._persist_all")),
    ("engine.flush (rows, JSON records)", ("PartitionEngine.flush",)),
    ("rest of Pipeline.flush", ("Pipeline.flush",)),
    ("Pipeline.handle_batch without flush (decode, validate, engine.process, metrics)", ("Pipeline.handle_batch",)),
    ("aiokafka producer", ("Sender.", "AIOKafkaProducer", "MessageAccumulator", "SendProduceReqHandler")),
    ("Faust producer buffer", ("ProducerBuffer",)),
    ("Faust consumer, conductor, fetcher", ("Conductor", "Consumer._drain_messages", "Fetcher", "AIOKafkaConsumerThread")),
    ("Faust stream / agent", ("Stream.", "Agent.", "Channel.")),
    ("Kafka connections", ("AIOKafkaConnection", "_SelectorSocketTransport")),
)


def areas(collapsed: Path) -> list[tuple[float, str]]:
    counts: collections.Counter = collections.Counter()
    total = 0
    for stack, n in stacks(collapsed):
        total += n
        name = next((a for a, keys in AREAS if any(k in stack for k in keys)), "other (event loop, threads, ...)")
        counts[name] += n
    return [(c / total, a) for a, c in counts.most_common()] if total else []


def format_summary(summary: dict, title: str) -> str:
    lines = [f"{title}: {summary['samples']} samples (py-spy, non-idle threads)"]
    if summary.get("areas"):
        lines.append("  share of samples by area")
        lines += [f"  {share:5.1%} {name}" for share, name in summary["areas"]]
    lines.append("  self  function (innermost frame)")
    lines += [f"  {share:5.1%} {name}" for share, name in summary["self"]]
    lines.append("  total function (anywhere on the stack)")
    lines += [f"  {share:5.1%} {name}" for share, name in summary["total"]]
    return "\n".join(lines)


def profile_run(ds, app_id: str, tmp: Path, out_dir: Path) -> tuple[dict, dict]:
    from benchmarks.throughput import run_copulse

    out_dir.mkdir(parents=True, exist_ok=True)
    collapsed = out_dir / f"{app_id}.collapsed.txt"
    holder: dict = {}

    def attach(pid: int) -> None:
        holder["spy"] = PySpy(pid, collapsed)

    try:
        result = run_copulse(ds, app_id, tmp, on_first=attach)
    finally:
        if "spy" in holder:
            holder["spy"].stop()
    progress(f"profile: collapsed stacks in {collapsed}")
    return result, summarise(collapsed)
