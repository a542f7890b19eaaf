"""``make run``: the whole pipeline on this machine, with the live scorecard in the terminal until Ctrl-C.

    python -m copulse.mainjob [--rate 30] [--consumers 1000] [--granularity 1m] [--enterprise-time-scale 1/3600]
                              [--no-generator]

1. provisions what is missing (``deploy/stack.sh provision``: Kafka jars, ClickHouse and Prometheus packages,
   ``pip install -e '.[dev]'``);
2. starts the local stack services that are not running (``deploy/stack.sh up``) and remembers which ones it
   started;
3. migrates ClickHouse and creates the topics;
4. starts ``copulse worker`` and ``copulse generate --rate N`` (event time = now; the enterprise answering at
   3600 x speed) in the background, logging to
   ``.local/logs/worker.log`` and ``.local/logs/generator.log``;
5. runs ``copulse live`` in the foreground (1-minute windows by default, so the first scored window shows
   within about two minutes);
6. on Ctrl-C (or when the live view ends) stops the generator, then the worker (TERM, KILL after 30 s), then
   the stack services it started itself; services that were already running are left alone.

Only the standard library is imported here: this runs before the package's dependencies are installed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "deploy" / "stack.sh"
SERVICES = ("kafka", "clickhouse", "prometheus")


def say(text: str) -> None:
    print(f"make run: {text}", flush=True)


def stack(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run([str(STACK), *args], cwd=REPO, env=env, check=check, text=True,
                          stdout=subprocess.PIPE if capture else None)


def running_services() -> set[str]:
    """Services of this checkout's stack that run now (``deploy/stack.sh status``)."""
    out = stack("status", check=False, capture=True).stdout or ""
    return {line.split()[0] for line in out.splitlines() if len(line.split()) > 1 and line.split()[1] == "running"}


def copulse(*args: str) -> list[str]:
    return [sys.executable, "-m", "copulse.cli", *args]


def quiet(argv: list[str]) -> None:
    """Run a copulse step showing its result, and its log lines only when it fails."""
    result = subprocess.run(argv, cwd=REPO, text=True, capture_output=True, check=False)
    for line in result.stdout.splitlines():
        say(line)
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        raise subprocess.CalledProcessError(result.returncode, argv)


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_background(name: str, argv: list[str], log_dir: Path) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{name}.log"
    with open(path, "ab") as log:  # the child keeps its own descriptor
        log.write(f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} make run starts {name} =====\n"
                  .encode())
        log.flush()
        # own session: the terminal's Ctrl-C reaches only the live view; we stop these in order afterwards
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    say(f"{name} started (pid {proc.pid}), log {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return proc


def stop(name: str, proc: subprocess.Popen | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
        say(f"{name} stopped")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        say(f"{name} did not stop within {timeout:.0f} s: killed")


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=float(os.environ.get("COPULSE_RUN_RATE", "30")),
                        help="generator messages per second (default 30, env COPULSE_RUN_RATE)")
    parser.add_argument("--consumers", type=int, default=1000, help="simulated consumers (default 1000)")
    parser.add_argument("--granularity", default="1m", help="window size of the live view (default 1m)")
    parser.add_argument("--enterprise-time-scale", default="1/3600", metavar="F",
                        help="the generator's enterprise delays x F (default 1/3600: a day of waiting for an answer "
                             "takes 24 s, an idea ships within about 20 minutes, so the feedback loop shows in a demo)")
    parser.add_argument("--no-generator", action="store_true", help="do not start `copulse generate`")
    parser.add_argument("--no-provision", action="store_true", help="skip `deploy/stack.sh provision`")
    args = parser.parse_args(argv)

    log_dir = Path(os.environ.get("COPULSE_STACK_DIR", REPO / ".local")) / "logs"
    started_stack: list[str] = []
    worker = generator = None
    interrupted = False

    def on_interrupt(signum, frame) -> None:  # the live view gets the same Ctrl-C and ends by itself
        nonlocal interrupted
        interrupted = True

    def check_interrupt() -> None:
        if interrupted:
            raise RuntimeError("interrupted")

    previous_int = signal.signal(signal.SIGINT, on_interrupt)
    previous_term = signal.signal(signal.SIGTERM, on_interrupt)
    rc = 0
    try:
        if not args.no_provision:
            say("provisioning what is missing (deploy/stack.sh provision)")
            stack("provision")
        before = running_services()
        try:
            stack("up")
        finally:  # also when `up` failed half-way: stop what it did start
            after = running_services()
            started_stack = [s for s in SERVICES if s in after and s not in before]
        check_interrupt()
        if started_stack:
            say(f"started stack services {', '.join(started_stack)} (stopped again when you quit)")
        else:
            say("stack was already running: it keeps running when you quit")
        quiet(copulse("db", "migrate"))
        quiet(copulse("topics", "create"))
        check_interrupt()
        metrics_port = int(os.environ.get("COPULSE_METRICS_PORT", "9464"))
        web_port = int(os.environ.get("COPULSE_WEB_PORT", "6066"))
        for port, what in ((metrics_port, "COPULSE_METRICS_PORT"), (web_port, "COPULSE_WEB_PORT")):
            if port_taken(port):
                raise RuntimeError(f"port {port} ({what}) is taken: is another `copulse worker` running? Stop it or "
                                   f"set {what} to a free port")
        worker = start_background("worker", copulse("worker", "--loglevel", "warning"), log_dir)
        if not args.no_generator:
            generator = start_background(
                "generator", copulse("generate", "--rate", f"{args.rate:g}", "--consumers", str(args.consumers),
                        "--enterprise-time-scale", args.enterprise_time_scale),
                log_dir)
        say("live scorecard follows; Ctrl-C stops the worker and the generator"
            + (" and the stack services make run started" if started_stack else ""))
        time.sleep(1.0)
        check_interrupt()
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited at once (code {worker.returncode}):\n{tail(log_dir / 'worker.log')}")
        live = subprocess.Popen(copulse("live", "--granularity", args.granularity), cwd=REPO)
        live.wait()  # Ctrl-C ends it (same process group as the terminal); our handler only notes it
        rc = 0 if interrupted else live.returncode
    except subprocess.CalledProcessError as exc:
        say(f"step failed: {' '.join(map(str, exc.cmd))} (exit {exc.returncode})")
        rc = exc.returncode or 1
    except RuntimeError as exc:
        if not interrupted:
            say(f"ERROR: {exc}")
            rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the cleanup
        say("stopping ...")
        stop("generator", generator, 15)
        stop("worker", worker, 30)
        if worker is not None and worker.returncode not in (0, -signal.SIGTERM, None) and not interrupted:
            say(f"the worker had exited with code {worker.returncode}; last lines of its log:\n"
                f"{tail(log_dir / 'worker.log')}")
        if started_stack:
            say(f"stopping the stack services make run started: {', '.join(started_stack)}")
            stack("down", *started_stack, check=False)
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
        say("done")
    return rc


if __name__ == "__main__":
    sys.exit(main())
