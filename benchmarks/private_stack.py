"""A private Kafka + ClickHouse stack for the operations benchmarks (``benchmarks.recovery``, ``benchmarks.soak``).

Those benchmarks kill brokers, stop ClickHouse and fill topics with a million events: they must never touch the
developer's main stack (Kafka 9092, ClickHouse 9000, ``<repo>/.local``). Each gets its own
``deploy/stack.sh`` stack: its own ``COPULSE_STACK_DIR`` and ports (defaults below, all overridable on the
command line). ``PrivateStack.apply()`` points ``benchmarks.common`` (``KAFKA``, ``CLICKHOUSE``) at it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks import common

REPO_DIR = Path(__file__).resolve().parents[1]
STACK = REPO_DIR / "deploy" / "stack.sh"


@dataclass
class PrivateStack:
    stack_dir: str
    kafka_port: int
    controller_port: int
    ch_native_port: int
    ch_http_port: int
    prometheus_port: int
    started: tuple[str, ...] = ()  # the services this run started (stopped again at the end)

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.kafka_port}"

    @property
    def clickhouse(self) -> dict:
        return {"host": "localhost", "port": self.ch_native_port, "user": "default", "password": ""}

    def env(self) -> dict[str, str]:
        """What deploy/stack.sh needs to address this stack (and nothing of the main one)."""
        return {
            "COPULSE_STACK_DIR": self.stack_dir,
            "COPULSE_KAFKA_PORT": str(self.kafka_port),
            "COPULSE_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "COPULSE_CH_NATIVE_PORT": str(self.ch_native_port),
            "COPULSE_CH_HTTP_PORT": str(self.ch_http_port),
            "COPULSE_PROMETHEUS_PORT": str(self.prometheus_port),
        }

    def apply(self) -> None:
        """Point benchmarks.common and every child process (generator, workers) at this stack."""
        common.KAFKA = self.bootstrap
        common.CLICKHOUSE.clear()
        common.CLICKHOUSE.update(self.clickhouse)
        os.environ.update(self.env())
        os.environ["COPULSE_KAFKA_BOOTSTRAP_SERVERS"] = self.bootstrap
        os.environ.pop("COPULSE_CLICKHOUSE_URL", None)

    def stack(self, *args: str, check: bool = True, quiet: bool = False) -> int:
        """Run ``deploy/stack.sh ARGS`` against this stack; its output goes to stderr (progress)."""
        out = subprocess.DEVNULL if quiet else None
        proc = subprocess.run(["bash", str(STACK), *args], env=dict(os.environ, **self.env()), cwd=REPO_DIR,
                              stdout=out if quiet else 2, stderr=out if quiet else 2)
        if check and proc.returncode:
            raise RuntimeError(f"deploy/stack.sh {' '.join(args)} failed (exit {proc.returncode})")
        return proc.returncode

    def running(self, service: str) -> bool:
        return self.stack("pid", service, check=False, quiet=True) == 0

    def up(self) -> None:
        before = {s: self.running(s) for s in ("kafka", "clickhouse")}
        common.progress(f"private stack in {self.stack_dir}: Kafka {self.bootstrap}, ClickHouse native "
                        f"{self.ch_native_port} ({', '.join(s + (' running' if r else ' starting') for s, r in before.items())})")
        self.stack("up", "kafka", "clickhouse")
        self.started = tuple(s for s, r in before.items() if not r)

    def down_started(self) -> None:
        """Stop what this run started (a stack that was already running is left running)."""
        if self.started:
            self.stack("down", *self.started, check=False)

    def kafka_data_dir(self) -> Path:
        return Path(self.stack_dir) / "kafka" / "data"


def add_arguments(parser: argparse.ArgumentParser, *, stack_dir: str, base_port: int) -> None:
    """--stack-dir and the ports; defaults: ``stack_dir``, Kafka base_port, controller +1, ClickHouse native
    +8, http +9, Prometheus +2 (never the main stack's 9092/9000)."""
    g = parser.add_argument_group("private stack (deploy/stack.sh; never the main one)")
    g.add_argument("--stack-dir", default=stack_dir, help=f"COPULSE_STACK_DIR of the private stack (default {stack_dir})")
    g.add_argument("--kafka-port", type=int, default=base_port, help=f"(default {base_port})")
    g.add_argument("--kafka-controller-port", type=int, default=base_port + 1, help=f"(default {base_port + 1})")
    g.add_argument("--ch-native-port", type=int, default=base_port + 8, help=f"(default {base_port + 8})")
    g.add_argument("--ch-http-port", type=int, default=base_port + 9, help=f"(default {base_port + 9})")
    g.add_argument("--prometheus-port", type=int, default=base_port + 2, help=f"(default {base_port + 2})")
    g.add_argument("--keep-stack", action="store_true", help="leave the private stack running at the end")


def from_args(args) -> PrivateStack:
    main = {9092, 9093, 9000, 8123, 9090}
    ports = {args.kafka_port, args.kafka_controller_port, args.ch_native_port, args.ch_http_port, args.prometheus_port}
    if ports & main:
        raise SystemExit(f"refusing ports {sorted(ports & main)}: those are the main stack's")
    if Path(args.stack_dir).resolve() == (REPO_DIR / ".local").resolve():
        raise SystemExit("refusing --stack-dir .local: that is the main stack's")
    return PrivateStack(args.stack_dir, args.kafka_port, args.kafka_controller_port, args.ch_native_port,
                        args.ch_http_port, args.prometheus_port)


def finish(stack: PrivateStack, args, app_id: str, tmp: Path, succeeded: bool, progress) -> None:
    """End of a run: unless --keep, delete its topics and database (and, after a success, its temporary
    directory); unless --keep-stack, stop the services this run started."""
    if not args.keep:
        _clean_up(app_id, tmp, succeeded, progress)
    if not args.keep_stack:
        stack.down_started()


def _clean_up(app_id: str, tmp: Path, succeeded: bool, progress) -> None:
    import shutil

    common.delete_topics(lambda name: name.startswith(app_id))
    try:
        common.drop_database(app_id)
    except Exception as exc:  # noqa: BLE001 - cleanup only
        progress(f"warning: could not drop database {app_id}: {exc}")
    if succeeded:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        progress(f"logs kept in {tmp}")
