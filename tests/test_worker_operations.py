"""The worker under real operations, on the real broker and ClickHouse: kill -9 while a producer keeps
writing, workers joining and leaving one consumer group, a restart with no new input. After each, the final
KPI rows equal the independent oracle exactly, every unique valid event is in the raw tables once, and no
window is left provisional."""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.test_engine import random_messages
from tests.test_worker_exactness import expected, send_events
from tests.worker_harness import WorkerProcess, final_kpis, free_port

pytestmark = pytest.mark.integration

#: one-minute windows and 10 s lateness: after the last event, idle sources close the last window within about
#: a minute of wall clock (an hour window would take an hour; the engine tests cover several granularities)
OPERATIONS = {"COPULSE_GRANULARITIES": '["1m"]', "COPULSE_ALLOWED_LATENESS_SECONDS": "10"}


class Producer(threading.Thread):
    """Sends ``msgs`` in small chunks at about ``rate`` messages per second; ``sent`` holds every message with
    the partition and offset Kafka gave it."""

    def __init__(self, kafka_bootstrap: str, settings, msgs: list[dict], rate: float, chunk: int = 20) -> None:
        super().__init__(daemon=True)
        self.args = (kafka_bootstrap, settings)
        self.msgs, self.rate, self.chunk = msgs, rate, chunk
        self.sent: list[dict] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(0, len(self.msgs), self.chunk):
                started = time.time()
                self.sent += send_events(*self.args, self.msgs[i:i + self.chunk])
                time.sleep(max(0.0, self.chunk / self.rate - (time.time() - started)))
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self) -> list[dict]:
        self.join(timeout=300)
        assert self.error is None, f"producer failed: {self.error!r}"
        assert not self.is_alive(), "producer did not finish"
        return self.sent


def unique_valid_events(sent: list[dict]) -> int:
    return len({m["event"]["event_id"] for m in sent})


def raw_event_count(client, database: str) -> int:
    return sum(client.execute(f"SELECT uniqExact(event_id) FROM `{database}`.{table}")[0][0]
               for table in ("purchases", "usage_events", "feedback"))


def wait_for_progress(client, database: str, timeout: float) -> None:
    """Wait until the raw tables grow: a worker is past start-up and restore and stores new events."""
    def count() -> int:
        try:
            return raw_event_count(client, database)
        except Exception:  # noqa: BLE001 - not migrated yet
            return -1

    before, deadline = count(), time.time() + timeout
    while count() <= before and time.time() < deadline:
        time.sleep(0.3)


def wait_exact(client, database: str, want: dict, raw_want: int, alive, timeout: float = 240) -> tuple[dict, int, int]:
    """Poll until the final rows equal ``want``, nothing is provisional and every event is stored raw."""
    deadline = time.time() + timeout
    got, not_final, raw = {}, -1, -1
    while time.time() < deadline:
        alive()
        try:
            got, not_final = final_kpis(client, database)
            raw = raw_event_count(client, database)
        except Exception:  # noqa: BLE001 - database not migrated yet
            got, not_final, raw = {}, -1, -1
        if not_final == 0 and got == want and raw == raw_want:
            break
        time.sleep(2)
    return got, not_final, raw


def assert_exact(client, database, settings, sent, alive, timeout: float = 240) -> None:
    want = expected(settings, sent)
    raw_want = unique_valid_events(sent)
    got, not_final, raw = wait_exact(client, database, want, raw_want, alive, timeout)
    wrong = [k for k in set(want) | set(got) if want.get(k) != got.get(k)]
    assert (len(wrong), not_final, raw) == (0, 0, raw_want), (
        f"{len(wrong)} of {len(want)} window-slices wrong (e.g. {sorted(wrong)[:3]}), {not_final} not final, "
        f"{raw} of {raw_want} events in the raw tables")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_kill_9_while_producing(isolated_worker, kafka_bootstrap, seed):
    """Several kill -9 at random moments while a producer keeps writing: nothing lost, nothing twice."""
    iso = isolated_worker(**OPERATIONS)
    rng = random.Random(seed)
    worker = iso.worker()
    worker.start()
    producer = Producer(kafka_bootstrap, iso.settings, random_messages(seed, 4000, consumers=300), rate=120)
    producer.start()
    for _ in range(4):
        wait_for_progress(iso.client, iso.database, timeout=90)  # the (re)started worker is processing
        time.sleep(rng.uniform(0.2, 4))
        worker.kill9()
        worker.start()
    sent = producer.finish()

    def alive() -> None:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"

    assert_exact(iso.client, iso.database, iso.settings, sent, alive)


@pytest.mark.slow
def test_workers_join_leave_and_crash(isolated_worker, kafka_bootstrap):
    """Three workers in one group while a producer writes: B joins mid-stream, C joins, B leaves with
    SIGTERM, C is killed with kill -9 and restarted. Finals exact, nothing lost, nothing provisional."""
    iso = isolated_worker(**OPERATIONS)
    a, b, c = [WorkerProcess(dict(iso.env, COPULSE_METRICS_PORT=str(free_port()), COPULSE_WEB_PORT=str(free_port())),
                             iso.log_path.with_suffix(f".{name}.log")) for name in "abc"]
    iso.workers += [a, b, c]
    a.start()
    producer = Producer(kafka_bootstrap, iso.settings, random_messages(31, 5000, consumers=400), rate=110)
    producer.start()
    time.sleep(8)
    b.start()
    time.sleep(10)
    c.start()
    time.sleep(10)
    b.stop()
    time.sleep(6)
    c.kill9()
    time.sleep(3)
    c.start()
    sent = producer.finish()

    def alive() -> None:
        for name, w in (("A", a), ("C", c)):
            assert w.alive(), f"worker {name} died:\n{w.log_tail()}"

    assert_exact(iso.client, iso.database, iso.settings, sent, alive, timeout=300)


def test_restart_without_new_input_closes_windows(isolated_worker, kafka_bootstrap):
    """Everything consumed and persisted, then kill -9 and a restart with no new message at all: the open
    windows still close by the idle timeout and their final rows land."""
    iso = isolated_worker(**OPERATIONS, COPULSE_IDLE_TIMEOUT_SECONDS="15")
    sent = send_events(kafka_bootstrap, iso.settings, random_messages(41, 600, consumers=80))
    worker = iso.worker()
    worker.start()
    raw_want = unique_valid_events(sent)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if raw_event_count(iso.client, iso.database) == raw_want:
                break
        except Exception:  # noqa: BLE001 - not migrated yet
            pass
        time.sleep(0.5)
    time.sleep(3)  # the state changelog follows the raw rows within a flush
    _, not_final = final_kpis(iso.client, iso.database)
    assert not_final > 0, "windows closed before the restart: the test proves nothing"
    worker.kill9()
    worker.start()

    def alive() -> None:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"

    assert_exact(iso.client, iso.database, iso.settings, sent, alive, timeout=120)


@pytest.mark.slow
def test_catch_up_of_a_backlog_closes_no_window_early(isolated_worker, kafka_bootstrap):
    """A worker started on a large backlog with a short idle timeout: while it works through the partitions
    one after another, the ones still waiting in Kafka must keep holding the watermark (they are behind, not
    idle), so no window closes before its events are read."""
    iso = isolated_worker(**OPERATIONS, COPULSE_IDLE_TIMEOUT_SECONDS="2", COPULSE_SINK_BATCH_ROWS="500")
    sent = send_events(kafka_bootstrap, iso.settings, random_messages(61, 30000, consumers=600))
    worker = iso.worker()
    worker.start()

    def alive() -> None:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"

    assert_exact(iso.client, iso.database, iso.settings, sent, alive, timeout=240)
