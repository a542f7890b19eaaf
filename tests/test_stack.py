"""deploy/stack.sh and its configuration files: valid, loopback-only, and the throwaway-ClickHouse
mechanism (COPULSE_STACK_DIR + port variables) that outage tests build on."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.worker_harness import free_port

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "deploy" / "stack.sh"


def _alive(pid: int) -> bool:
    """Like stack.sh's alive(): a zombie waiting for its reaper counts as stopped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_stack_script_parses():
    subprocess.run(["bash", "-n", str(STACK)], check=True)


def test_prometheus_config_and_rules_pass_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run `make provision`"
    result = subprocess.run(
        [promtool, "check", "config", str(REPO / "deploy/prometheus/prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_clickhouse_xml_is_valid_and_loopback_only():
    config = ET.parse(REPO / "deploy/clickhouse/config.xml").getroot()
    assert config.tag == "yandex"  # the root both 18.16 and current ClickHouse accept
    assert [e.text for e in config.findall("listen_host")] == ["127.0.0.1"]
    assert config.find("interserver_http_port") is None
    assert config.findtext("tcp_port") == "@CH_NATIVE_PORT@" and config.findtext("http_port") == "@CH_HTTP_PORT@"

    users = ET.parse(REPO / "deploy/clickhouse/users.xml").getroot()
    reader = users.find("users/copulse_reader")
    assert reader.findtext("password") == "copulse_reader"
    assert users.findtext(f"profiles/{reader.findtext('profile')}/readonly") == "2"
    for user in users.find("users"):
        assert {ip.text for ip in user.findall("networks/ip")} <= {"127.0.0.1", "::1"}, user.tag


def test_kafka_template_is_loopback_kraft():
    props = dict(
        line.split("=", 1)
        for line in (REPO / "deploy/kafka/server.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["auto.create.topics.enable"] == "false"
    assert all("127.0.0.1" in part for part in props["listeners"].split(","))


@pytest.mark.integration
def test_throwaway_clickhouse_on_its_own_dir_and_ports(tmp_path):
    """What an outage test does: start a second ClickHouse, use it, stop it; the main stack is untouched."""
    from clickhouse_driver import Client

    native, http = free_port(), free_port()
    env = {
        **os.environ,
        "COPULSE_STACK_DIR": str(tmp_path / "stack"),
        "COPULSE_CH_NATIVE_PORT": str(native),
        "COPULSE_CH_HTTP_PORT": str(http),
    }

    def stack(*args: str) -> str:
        result = subprocess.run([str(STACK), *args], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    try:
        stack("clickhouse-up")
        pid = int(stack("pid", "clickhouse"))
        assert (tmp_path / "stack/run/clickhouse.pid").read_text().strip() == str(pid)
        assert Client(host="127.0.0.1", port=native).execute("SELECT 1") == [(1,)]
        assert f"running   pid {pid}" in stack("status", "clickhouse")
        assert stack("clickhouse-up").count("already running") == 1  # idempotent
    finally:
        stack("clickhouse-down")
    assert "stopped" in stack("status", "clickhouse")
    assert "not running" in stack("clickhouse-down")  # idempotent
    assert not _alive(pid)
