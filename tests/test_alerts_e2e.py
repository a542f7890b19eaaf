"""End to end: a real worker, a throwaway Prometheus and the real rules (rendered with short windows).

The worker runs with 10 s windows, 1 s lateness and fast idle timeouts, fed with ratings at the wall clock:
first steady satisfaction (mostly 5), then a drop (mostly 1). A private Prometheus (own port, own storage,
scrape and evaluation every second) scrapes the worker and evaluates deploy/prometheus/render_rules.py's
rules rendered with 10 s granularity, a 60 s trailing baseline and ``for: 3s``. Through its HTTP API the test
asserts that CopulseCsatDrop is not pending or firing on steady data and fires after the drop. The shared
Prometheus on 9090 is never touched.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from copulse.settings import Settings
from streams.codec import encode
from tests.test_alert_rules import load_renderer
from tests.worker_harness import free_port

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

E2E_RULE_OVERRIDES = {
    "kpi_alerts": {
        "granularity": "10s",
        "evaluation_interval": "1s",
        "baseline_offset": "1w",  # no such history in a fresh Prometheus: the trailing average is the baseline
        "baseline_range": "10s",
        "fallback_range": "60s",
        "alerts": {"csat": {"min_volume": 20, "for": "3s"}},
    }
}


class Prometheus:
    """A throwaway Prometheus server (Debian's binary) in ``directory``."""

    def __init__(self, directory: Path, target: str, rule_files: dict[str, str]) -> None:
        self.dir = directory
        self.port = free_port()
        (directory / "rules").mkdir(parents=True)
        for name, text in rule_files.items():
            (directory / "rules" / name).write_text(text)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(directory / "rules" / "*.yml")],
            "scrape_configs": [{"job_name": "copulse", "static_configs": [{"targets": [target]}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if not Path(PROMETHEUS).exists():
            pytest.fail("prometheus is missing: `make provision` installs Debian's prometheus package")
        with open(self.dir / "prometheus.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1h"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"prometheus did not get ready:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, n: int = 30) -> str:
        path = self.dir / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def alerts(self, name: str) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"].get("alertname") == name]


class Ratings(threading.Thread):
    """Feedback ratings at the wall clock, ``rate`` per second, keyed by consumer; ``mode`` steady or drop."""

    def __init__(self, settings: Settings, rate: float = 40.0) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaProducer

        self.topic = settings.topic_feedback
        self.rate = rate
        self.mode = "steady"
        self.sent = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._rng = random.Random(11)
        self._producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=5)

    def score(self) -> int:
        good = self._rng.random() < 0.9
        if self.mode == "steady":
            return 5 if good else 4
        return 1 if good else 2

    def run(self) -> None:
        try:
            started = time.monotonic()
            while not self._halt.is_set():
                due = started + self.sent / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                consumer = f"c-{self._rng.randrange(400):04d}"
                record = {"event_id": f"e2e-{self.sent}-{self._rng.getrandbits(32):08x}", "consumer_id": consumer,
                          "occurred_at": datetime.now(UTC), "channel": "web", "region": "DE", "segment": None,
                          "schema_version": 1, "kind": "rating", "score": self.score(), "product_id": "AUD-001",
                          "category": "audio", "text": None, "in_reply_to": None}
                self._producer.send(self.topic, key=consumer.encode(), value=encode("feedback", record))
                self.sent += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self._producer.flush()
            self._producer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


@pytest.fixture
def e2e(isolated_worker, tmp_path):
    iso = isolated_worker(
        COPULSE_PARTITIONS=2,
        COPULSE_GRANULARITIES='["10s"]',
        COPULSE_ALLOWED_LATENESS_SECONDS=1,
        COPULSE_IDLE_TIMEOUT_SECONDS=2,
        COPULSE_EMIT_INTERVAL_SECONDS=1,
        COPULSE_SLICES='["overall", "channel"]',
        COPULSE_METRIC_SLICES='["overall"]',
    )
    renderer = load_renderer()
    prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{iso.env['COPULSE_METRICS_PORT']}",
                            renderer.render(renderer.load_params(overrides=E2E_RULE_OVERRIDES)))
    ratings = Ratings(iso.settings)
    try:
        yield iso.settings, iso.worker(), prometheus, ratings
    finally:
        try:
            if ratings.is_alive():
                ratings.stop()
        finally:
            prometheus.stop()


def test_csat_drop_alert_fires_after_a_drop_and_not_on_steady_data(e2e):
    _, worker, prometheus, ratings = e2e
    csat = 'copulse:kpi_csat_avg{granularity="10", slice="overall"}'
    worker.start()
    prometheus.start()
    ratings.start()

    def check_processes() -> None:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        assert prometheus.proc.poll() is None, f"prometheus died:\n{prometheus.log_tail()}"
        assert ratings.error is None, ratings.error

    # 1. steady: wait for the first closed window to reach Prometheus through the KPI gauges and the
    #    recording rules, then watch for 35 s more (several windows): the alert must stay silent
    deadline = time.time() + 90
    while not prometheus.query(csat):
        check_processes()
        assert time.time() < deadline, (
            f"no {csat} in Prometheus; targets: {prometheus.api('targets')['activeTargets']}\n{worker.log_tail()}"
        )
        time.sleep(1)
    steady_until = time.time() + 35
    values = []
    while time.time() < steady_until:
        check_processes()
        assert prometheus.alerts("CopulseCsatDrop") == [], "CSAT alert on steady data"
        values += [float(r["value"][1]) for r in prometheus.query(csat)]
        time.sleep(2)
    assert values and min(values) > 4.5, values
    # windows keep closing: the exported window end moved on several times during the steady phase
    moved = prometheus.query('changes(copulse_kpi_window_end_timestamp_seconds{slice="overall"}[40s])')
    assert moved and float(moved[0]["value"][1]) >= 2, moved

    # 2. drop: ratings fall from mostly 5 to mostly 1; the alert goes pending, then firing (for: 3s)
    ratings.mode = "drop"
    deadline = time.time() + 75
    firing: list[dict] = []
    while not firing:
        check_processes()
        assert time.time() < deadline, (
            f"CopulseCsatDrop did not fire; csat now {prometheus.query(csat)}, "
            f"alerts {prometheus.api('alerts')['alerts']}"
        )
        firing = [a for a in prometheus.alerts("CopulseCsatDrop") if a["state"] == "firing"]
        time.sleep(1)
    alert = firing[0]
    assert alert["labels"]["granularity"] == "10" and alert["labels"]["slice"] == "overall"
    assert alert["labels"]["severity"] == "warning"
    assert "dropped below 90% of its baseline" in alert["annotations"]["summary"]
    assert float(alert["value"]) < 0.9 * max(values)  # the current CSAT, below 90 % of the steady level
    ratings.stop()
    assert ratings.error is None and ratings.sent > 0
