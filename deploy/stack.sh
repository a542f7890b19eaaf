#!/usr/bin/env bash
# The local stack of copulse: Kafka (KRaft, single node), ClickHouse and Prometheus as plain
# background processes of this machine, no Docker. Everything they download, store, log or
# pid-file lives under $COPULSE_STACK_DIR (default <repo>/.local, git-ignored).
#
#   deploy/stack.sh provision             install what is missing (Kafka jars, Debian packages, Python package)
#   deploy/stack.sh up     [SERVICE...]   provision, start what is not running, wait until each answers
#   deploy/stack.sh down   [SERVICE...]   stop what this script started (by pid file: TERM, then KILL)
#   deploy/stack.sh status [SERVICE...]   one line per service
#   deploy/stack.sh pid SERVICE           print the pid of a running service (for kill -9 tests)
#   deploy/stack.sh clean-data            delete data and logs, keep the Kafka jar cache (stack must be down)
#   deploy/stack.sh clickhouse-up | clickhouse-down | kafka-up | kafka-down | prometheus-up | prometheus-down
#
# SERVICE is kafka, clickhouse or prometheus. Environment (all optional):
#   COPULSE_STACK_DIR             root of data/logs/pids (default <repo>/.local); a second stack, e.g. a
#                                 throwaway ClickHouse for an outage test, needs its own dir AND own ports
#   COPULSE_KAFKA_PORT (9092)  COPULSE_KAFKA_CONTROLLER_PORT (9093)
#   COPULSE_CH_NATIVE_PORT (9000)  COPULSE_CH_HTTP_PORT (8123)  COPULSE_PROMETHEUS_PORT (9090)
#   COPULSE_STACK_READY_TIMEOUT (120 s)  COPULSE_STACK_STOP_TIMEOUT (30 s)
#   PYTHON (python3)              the interpreter copulse is installed into
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${COPULSE_STACK_DIR:-$REPO_DIR/.local}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"
LOG_DIR="$STACK_DIR/logs"
RUN_DIR="$STACK_DIR/run"
# The jar cache belongs to the checkout, not to a stack dir: a throwaway stack reuses it.
KAFKA_LIBS="${COPULSE_KAFKA_LIBS:-$REPO_DIR/.local/kafka/libs}"
PYTHON="${PYTHON:-python3}"

KAFKA_PORT="${COPULSE_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${COPULSE_KAFKA_CONTROLLER_PORT:-9093}"
CH_NATIVE_PORT="${COPULSE_CH_NATIVE_PORT:-9000}"
CH_HTTP_PORT="${COPULSE_CH_HTTP_PORT:-8123}"
PROM_PORT="${COPULSE_PROMETHEUS_PORT:-9090}"
READY_TIMEOUT="${COPULSE_STACK_READY_TIMEOUT:-120}"
STOP_TIMEOUT="${COPULSE_STACK_STOP_TIMEOUT:-30}"

ALL_SERVICES=(kafka clickhouse prometheus)

say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: ERROR: %s\n' "$*" >&2; exit 1; }
rel() { local p="$1"; printf '%s' "${p#"$PWD"/}"; }

# ----------------------------------------------------------------------------------------------
# per-service facts
# ----------------------------------------------------------------------------------------------
svc_port() {
  case "$1" in
    kafka) echo "$KAFKA_PORT" ;;
    clickhouse) echo "$CH_NATIVE_PORT" ;;
    prometheus) echo "$PROM_PORT" ;;
    *) die "unknown service '$1' (kafka, clickhouse, prometheus)" ;;
  esac
}
svc_ports_text() {
  case "$1" in
    kafka) echo "127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)" ;;
    clickhouse) echo "127.0.0.1:$CH_NATIVE_PORT (http $CH_HTTP_PORT)" ;;
    prometheus) echo "127.0.0.1:$PROM_PORT" ;;
  esac
}
svc_log() { echo "$LOG_DIR/$1.log"; }
svc_pidfile() { echo "$RUN_DIR/$1.pid"; }
# A string that must appear in /proc/PID/cmdline: guards against a recycled pid and against
# mistaking another stack dir's process for ours.
svc_marker() {
  case "$1" in
    kafka) echo "$STACK_DIR/kafka/server.properties" ;;
    clickhouse) echo "$STACK_DIR/clickhouse/etc/config.xml" ;;
    prometheus) echo "$STACK_DIR/prometheus/data" ;;
  esac
}

# alive PID: the process exists and is not a zombie (kill -0 succeeds on zombies)
alive() {
  local state
  state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Print the pid of NAME if its pid file names a live process of ours; else return 1.
svc_pid() {
  local pidfile pid
  pidfile="$(svc_pidfile "$1")"
  [[ -f "$pidfile" ]] || return 1
  pid="$(tr -dc '0-9' <"$pidfile")"
  [[ -n "$pid" ]] && alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$(svc_marker "$1")" || return 1
  echo "$pid"
}

# ----------------------------------------------------------------------------------------------
# provisioning
# ----------------------------------------------------------------------------------------------
clickhouse_server_cmd() {
  if command -v clickhouse-server >/dev/null 2>&1; then
    command -v clickhouse-server
  elif [[ -x /usr/sbin/clickhouse-server ]]; then
    echo /usr/sbin/clickhouse-server
  elif command -v clickhouse >/dev/null 2>&1; then
    echo "$(command -v clickhouse) server"
  else
    return 1
  fi
}
clickhouse_client_cmd() {
  if command -v clickhouse-client >/dev/null 2>&1; then
    command -v clickhouse-client
  elif command -v clickhouse >/dev/null 2>&1; then
    echo "$(command -v clickhouse) client"
  else
    return 1
  fi
}

apt_install() {
  local sudo=() rc=0 policy=/usr/sbin/policy-rc.d made_policy=0
  command -v apt-get >/dev/null 2>&1 || die "missing $*, and this is not a Debian/Ubuntu machine (no apt-get):
  install ClickHouse (server + client) and Prometheus (prometheus + promtool) yourself and put them on PATH"
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "missing Debian packages $*: run as root or install sudo, or run
  apt-get install -y --no-install-recommends $*   as root"
    sudo=(sudo)
  fi
  say "installing Debian packages: $* (apt-get)"
  # Keep the packages' maintainer scripts from starting system services of their own: they would
  # take the ports 9000/8123/9090 the local stack needs. policy-rc.d exit 101 = "action forbidden".
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod 755 "$policy" && made_policy=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
  if [[ $rc == 0 ]]; then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" || rc=$?
  fi
  [[ $made_policy == 1 ]] && "${sudo[@]}" rm -f "$policy"
  [[ $rc == 0 ]] || die "apt-get install $* failed (exit $rc)"
}

# provision [SERVICE...]: only what the named services need; no argument = everything + Python package.
provision() {
  local services=("$@") want_python=0 problems=() pkgs=() s
  if [[ ${#services[@]} == 0 ]]; then services=("${ALL_SERVICES[@]}"); want_python=1; fi
  mkdir -p "$LOG_DIR" "$RUN_DIR"

  for s in "${services[@]}"; do
    case "$s" in
      kafka)
        command -v java >/dev/null 2>&1 ||
          problems+=("java: Kafka needs a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless)")
        if ! compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null; then
          command -v mvn >/dev/null 2>&1 ||
            problems+=("mvn: Maven resolves the Kafka jars into $(rel "$KAFKA_LIBS") (Debian: apt-get install maven)")
        fi
        # the readiness check is a real metadata request through kafka-python
        "$PYTHON" -c 'import kafka' >/dev/null 2>&1 || want_python=1
        ;;
      clickhouse)
        { clickhouse_server_cmd && clickhouse_client_cmd; } >/dev/null 2>&1 || pkgs+=(clickhouse-server clickhouse-client)
        ;;
      prometheus)
        { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || pkgs+=(prometheus)
        ;;
      *) die "unknown service '$s' (kafka, clickhouse, prometheus)" ;;
    esac
  done
  if [[ $want_python == 1 ]] && ! command -v "$PYTHON" >/dev/null 2>&1; then
    problems+=("$PYTHON: Python 3.11+ with pip (set PYTHON=... to use another interpreter)")
  fi
  if [[ ${#problems[@]} -gt 0 ]]; then
    printf 'stack: ERROR: missing prerequisites:\n' >&2
    printf '  - %s\n' "${problems[@]}" >&2
    exit 1
  fi

  if [[ ${#pkgs[@]} -gt 0 ]]; then apt_install "${pkgs[@]}"; fi

  if [[ " ${services[*]} " == *" kafka "* ]] && ! compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null; then
    say "resolving the Kafka jars into $(rel "$KAFKA_LIBS") (mvn, first time only)"
    mkdir -p "$KAFKA_LIBS"
    mvn -q -B -f "$REPO_DIR/deploy/kafka/pom.xml" dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIBS" ||
      die "mvn could not resolve the Kafka jars (see above); the pom is deploy/kafka/pom.xml"
  fi

  if [[ $want_python == 1 ]]; then provision_python; fi
}

# pip install -e '.[dev]' unless copulse is already installed from THIS checkout with THIS pyproject.toml
provision_python() {
  local stamp="$REPO_DIR/.local/pip-install.stamp" want have=""
  want="$(cksum <"$REPO_DIR/pyproject.toml" | cut -d' ' -f1) $(command -v "$PYTHON")"
  [[ -f "$stamp" ]] && have="$(cat "$stamp")"
  if [[ "$want" == "$have" ]] && (cd / && "$PYTHON" - "$REPO_DIR" <<'PY') >/dev/null 2>&1; then
import os, sys
import copulse, kafka, clickhouse_driver, pytest, chdb  # noqa: F401
sys.exit(os.path.dirname(os.path.dirname(os.path.realpath(copulse.__file__))) != os.path.realpath(sys.argv[1]))
PY
    return 0
  fi
  say "installing the copulse Python package and its dev dependencies ($PYTHON -m pip install -e '.[dev]')"
  PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install -q -e "$REPO_DIR[dev]" || die "pip install -e '.[dev]' failed (see above)"
  mkdir -p "$(dirname "$stamp")"
  echo "$want" >"$stamp"
}

# ----------------------------------------------------------------------------------------------
# start / readiness / stop
# ----------------------------------------------------------------------------------------------
render() { # render TEMPLATE OUT KEY=VALUE...
  local template="$1" out="$2" args=() kv
  shift 2
  for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${args[@]}" "$template" >"$out.tmp" && mv "$out.tmp" "$out"
}

prepare_kafka() {
  local dir="$STACK_DIR/kafka" props="$STACK_DIR/kafka/server.properties" cid
  mkdir -p "$dir/data"
  render "$REPO_DIR/deploy/kafka/server.properties" "$props" \
    KAFKA_PORT="$KAFKA_PORT" KAFKA_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" KAFKA_DATA_DIR="$dir/data"
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    if [[ ! -s "$dir/cluster-id" ]]; then
      # same format as `kafka-storage random-uuid` (base64url of 16 random bytes, never starting with '-')
      "$PYTHON" -c 'import base64, uuid
while True:
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not cid.startswith("-"):
        break
print(cid)' >"$dir/cluster-id"
    fi
    say "formatting Kafka storage $(rel "$dir/data") (cluster id $(cat "$dir/cluster-id"))"
    java -cp "$KAFKA_LIBS/*" -Dlog4j.configuration="file:$REPO_DIR/deploy/kafka/log4j.properties" \
      kafka.tools.StorageTool format -t "$(cat "$dir/cluster-id")" -c "$props" -g >>"$(svc_log kafka)" 2>&1 ||
      name=kafka fail_log "formatting Kafka storage $(rel "$dir/data") failed"
  fi
}

prepare_clickhouse() {
  local dir="$STACK_DIR/clickhouse"
  mkdir -p "$dir/etc" "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
  render "$REPO_DIR/deploy/clickhouse/config.xml" "$dir/etc/config.xml" \
    CH_NATIVE_PORT="$CH_NATIVE_PORT" CH_HTTP_PORT="$CH_HTTP_PORT" CH_DIR="$dir" LOG_DIR="$LOG_DIR"
  # a copy, so that the server's *-preprocessed.xml files land in .local, not in deploy/
  cp "$REPO_DIR/deploy/clickhouse/users.xml" "$dir/etc/users.xml"
}

prepare_prometheus() { mkdir -p "$STACK_DIR/prometheus/data"; }

# svc_command NAME: set the array CMD to the service's command line
svc_command() {
  case "$1" in
    kafka)
      CMD=(java -Xmx768m -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
        "-Dlog4j.configuration=file:$REPO_DIR/deploy/kafka/log4j.properties"
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$STACK_DIR/kafka/server.properties")
      ;;
    clickhouse)
      read -ra CMD <<<"$(clickhouse_server_cmd)"
      CMD+=("--config-file=$STACK_DIR/clickhouse/etc/config.xml")
      ;;
    prometheus)
      CMD=(prometheus "--config.file=$REPO_DIR/deploy/prometheus/prometheus.yml"
        "--storage.tsdb.path=$STACK_DIR/prometheus/data" --storage.tsdb.retention.time=2d
        "--web.listen-address=127.0.0.1:$PROM_PORT" --web.enable-lifecycle)
      ;;
  esac
}

# start NAME: start it in the background unless it already runs. Prints nothing when adopted.
start() {
  local name="$1" port pid log pidfile
  port="$(svc_port "$name")"
  log="$(svc_log "$name")"
  pidfile="$(svc_pidfile "$name")"
  if pid="$(svc_pid "$name")"; then
    say "$name already running (pid $pid)"
    return 0
  fi
  rm -f "$pidfile"
  local ports=("$port")
  [[ $name == kafka ]] && ports+=("$KAFKA_CONTROLLER_PORT")
  [[ $name == clickhouse ]] && ports+=("$CH_HTTP_PORT")
  local p
  for p in "${ports[@]}"; do
    if port_open "$p"; then
      die "port $p (for $name) is taken by a process that is not this stack's (no live pid in $(rel "$pidfile")).
  Find it with: ss -ltnp 'sport = :$p'   then stop it, or give this stack other ports (see the top of deploy/stack.sh)"
    fi
  done
  "prepare_$name"
  mkdir -p "$LOG_DIR" "$RUN_DIR"
  printf '\n===== %s starting %s =====\n' "$(date -u +%FT%TZ)" "$name" >>"$log"
  # setsid: its own session, so a Ctrl-C in the terminal that ran `make up` does not reach it.
  # Not a process-group leader here, so setsid execs in place and $! is the service's own pid.
  svc_command "$name"
  setsid "${CMD[@]}" </dev/null >>"$log" 2>&1 &
  echo $! >"$pidfile"
  say "$name starting (pid $!), log $(rel "$log")"
}

ready_check() {
  case "$1" in
    kafka)
      "$PYTHON" - "127.0.0.1:$KAFKA_PORT" <<'PY' >/dev/null 2>&1
import sys
from kafka.admin import KafkaAdminClient
client = KafkaAdminClient(bootstrap_servers=sys.argv[1], client_id="copulse-stack-ready", request_timeout_ms=5000)
try:
    client.list_topics()
finally:
    client.close()
PY
      ;;
    clickhouse)
      # shellcheck disable=SC2046
      $(clickhouse_client_cmd) --host 127.0.0.1 --port "$CH_NATIVE_PORT" --query 'SELECT 1' >/dev/null 2>&1
      ;;
    prometheus)
      "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read()' \
        "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null 2>&1
      ;;
  esac
}

wait_ready() {
  local name="$1" port pid deadline
  port="$(svc_port "$name")"
  deadline=$((SECONDS + READY_TIMEOUT))
  while :; do
    if ! pid="$(svc_pid "$name")"; then
      fail_log "$name exited during startup"
    fi
    if port_open "$port" && ready_check "$name"; then
      say "$name ready: $(svc_ports_text "$name"), pid $pid"
      return 0
    fi
    ((SECONDS < deadline)) || fail_log "$name did not become ready within ${READY_TIMEOUT}s (pid $pid still running; stop it with deploy/stack.sh down $name)"
    sleep 0.5
  done
}

fail_log() {
  local log
  log="$(svc_log "$name")"
  printf 'stack: ERROR: %s. Last lines of %s:\n' "$1" "$log" >&2
  tail -n 40 "$log" >&2 || true
  if [[ $name == clickhouse && -f "$LOG_DIR/clickhouse.err.log" ]]; then
    printf -- '--- %s:\n' "$LOG_DIR/clickhouse.err.log" >&2
    tail -n 20 "$LOG_DIR/clickhouse.err.log" >&2 || true
  fi
  exit 1
}

up() {
  local services=("$@") s
  [[ ${#services[@]} -gt 0 ]] || services=("${ALL_SERVICES[@]}")
  if [[ $# == 0 ]]; then provision; else provision "${services[@]}"; fi
  # start everything first, then wait: the services boot in parallel
  for s in "${services[@]}"; do start "$s"; done
  for s in "${services[@]}"; do wait_ready "$s"; done
  say "up. logs in $(rel "$LOG_DIR")/, data in $(rel "$STACK_DIR")/"
}

down() {
  local services=("$@") s pid stopping=() deadline
  [[ ${#services[@]} -gt 0 ]] || services=(prometheus kafka clickhouse)
  for s in "${services[@]}"; do
    svc_port "$s" >/dev/null
    if pid="$(svc_pid "$s")"; then
      kill -TERM "$pid" 2>/dev/null || true
      stopping+=("$s:$pid")
      say "$s stopping (pid $pid)"
    else
      rm -f "$(svc_pidfile "$s")"
      say "$s not running"
    fi
  done
  deadline=$((SECONDS + STOP_TIMEOUT))
  for entry in "${stopping[@]+"${stopping[@]}"}"; do
    s="${entry%%:*}"
    pid="${entry#*:}"
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "$pid"; then
      say "$s did not stop within ${STOP_TIMEOUT}s, sending KILL to pid $pid"
      kill -KILL "$pid" 2>/dev/null || true
      local tries=0
      while alive "$pid" && ((tries++ < 100)); do sleep 0.1; done
      alive "$pid" && die "$s (pid $pid) survived KILL"
    fi
    rm -f "$(svc_pidfile "$s")"
    say "$s stopped"
  done
}

status() {
  local services=("$@") s pid port
  [[ ${#services[@]} -gt 0 ]] || services=("${ALL_SERVICES[@]}")
  for s in "${services[@]}"; do
    port="$(svc_port "$s")"
    if pid="$(svc_pid "$s")"; then
      if port_open "$port"; then
        printf '%-11s running   pid %-8s %s\n' "$s" "$pid" "$(svc_ports_text "$s")"
      else
        printf '%-11s starting  pid %-8s %s (port not answering yet)\n' "$s" "$pid" "$(svc_ports_text "$s")"
      fi
    elif port_open "$port"; then
      printf '%-11s foreign   pid -        port %s answers, but not a process of this stack\n' "$s" "$port"
    else
      printf '%-11s stopped   pid -        %s\n' "$s" "$(svc_ports_text "$s")"
    fi
  done
}

clean_data() {
  local s
  for s in "${ALL_SERVICES[@]}"; do
    if svc_pid "$s" >/dev/null; then die "$s is running: run 'make down' (deploy/stack.sh down) first"; fi
  done
  say "deleting data and logs under $(rel "$STACK_DIR") (keeping the jar cache $(rel "$KAFKA_LIBS"))"
  rm -rf "$STACK_DIR/kafka/data" "$STACK_DIR/kafka/cluster-id" "$STACK_DIR/kafka/server.properties" \
    "$STACK_DIR/clickhouse" "$STACK_DIR/prometheus" "$STACK_DIR/worker" "$LOG_DIR" "$RUN_DIR"
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    provision) provision "$@" ;;
    up) up "$@" ;;
    down) down "$@" ;;
    status) status "$@" ;;
    pid) [[ $# == 1 ]] || die "usage: deploy/stack.sh pid SERVICE"; svc_port "$1" >/dev/null; svc_pid "$1" || die "$1 is not running" ;;
    clean-data) clean_data ;;
    kafka-up | clickhouse-up | prometheus-up) up "${cmd%-up}" ;;
    kafka-down | clickhouse-down | prometheus-down) down "${cmd%-down}" ;;
    -h | --help | help | "") usage ;;
    *) usage >&2; die "unknown command '$cmd'" ;;
  esac
}

main "$@"
