"""docker-compose.yml stays consistent with the settings and the local stack (no Docker needed: YAML only)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from copulse.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
DEFAULTS = Settings.model_construct()  # field defaults, ignoring this machine's COPULSE_* environment

#: service -> container ports it must publish on the same host port as the local stack
EXPECTED_PORTS = {
    "kafka": {9092},
    "clickhouse": {9000, 8123},
    "prometheus": {9090},
    "worker": {DEFAULTS.metrics_port, DEFAULTS.web_port},  # 9464, 6066
    "grafana": {3000},
}
OFFICIAL_IMAGES = {
    "kafka": "apache/kafka:",
    "clickhouse": "clickhouse/clickhouse-server:",
    "prometheus": "prom/prometheus:",
    "grafana": "grafana/grafana:",
}


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _published(service: dict) -> dict[int, int]:
    """container port -> host port."""
    mapping = {}
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        mapping[int(parts[-1])] = int(parts[-2])
    return mapping


def _stack_default(variable: str) -> int:
    match = re.search(rf'\${{{variable}:-(\d+)}}', (REPO / "deploy" / "stack.sh").read_text())
    assert match, f"deploy/stack.sh has no default for {variable}"
    return int(match.group(1))


def test_expected_services():
    assert set(SERVICES) == {"kafka", "clickhouse", "prometheus", "grafana", "worker", "generator"}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck(name):
    check = SERVICES[name].get("healthcheck")
    assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_copulse_variables_are_settings_fields(name):
    fields = set(Settings.model_fields)
    for variable in _env(SERVICES[name]):
        if variable.startswith("COPULSE_"):
            assert variable[len("COPULSE_") :].lower() in fields, f"{name}: {variable} is not a Settings field"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_copulse_values_validate_and_topics_match_defaults(name):
    env = {k[len("COPULSE_") :].lower(): v for k, v in _env(SERVICES[name]).items() if k.startswith("COPULSE_")}
    settings = Settings(**env)  # raises on a value Settings rejects
    for field in Settings.model_fields:
        if field.startswith("topic_"):
            assert getattr(settings, field) == getattr(DEFAULTS, field), f"{name}: {field} differs from Settings"


def test_published_ports_match_the_local_stack():
    assert _stack_default("COPULSE_KAFKA_PORT") == 9092
    assert _stack_default("COPULSE_CH_NATIVE_PORT") == 9000
    assert _stack_default("COPULSE_CH_HTTP_PORT") == 8123
    assert _stack_default("COPULSE_PROMETHEUS_PORT") == 9090
    for name, ports in EXPECTED_PORTS.items():
        published = _published(SERVICES[name])
        assert set(published) == ports, f"{name} publishes {published}"
        assert all(host == container for container, host in published.items()), f"{name}: {published}"
    assert not _published(SERVICES["generator"])
    all_host_ports = [p for s in SERVICES.values() for p in _published(s).values()]
    assert sorted(all_host_ports) == sorted({*all_host_ports}), "a host port is published twice"


def test_published_ports_are_loopback_only():
    for name, service in SERVICES.items():
        for entry in service.get("ports", []):
            assert str(entry).startswith("127.0.0.1:"), f"{name} publishes {entry} on every interface"


def test_worker_ports_agree_with_its_settings():
    env = _env(SERVICES["worker"])
    assert int(env["COPULSE_METRICS_PORT"]) == DEFAULTS.metrics_port == 9464
    assert int(env["COPULSE_WEB_PORT"]) == DEFAULTS.web_port == 6066


@pytest.mark.parametrize("name", sorted(OFFICIAL_IMAGES))
def test_images_are_official_and_pinned(name):
    image = SERVICES[name]["image"]
    assert image.startswith(OFFICIAL_IMAGES[name]), image
    assert not image.endswith(":latest")
    if name == "kafka":
        assert image == "apache/kafka:3.9.1"  # the version deploy/kafka/pom.xml runs locally
        assert "<kafka.version>3.9.1</kafka.version>" in (REPO / "deploy/kafka/pom.xml").read_text()


def test_worker_and_generator_build_from_the_project_dockerfile():
    for name, command in (("worker", "copulse worker"), ("generator", "copulse generate --rate 200")):
        build = SERVICES[name]["build"]
        assert build["dockerfile"] == "deploy/docker/Dockerfile" and build["context"] == "."
        assert command in " ".join(SERVICES[name]["command"])
    dockerfile = (REPO / "deploy/docker/Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "pip install ." in dockerfile


def test_kafka_is_kraft_without_auto_topic_creation():
    env = _env(SERVICES["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "PLAINTEXT://localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    internal = _env(SERVICES["worker"])["COPULSE_KAFKA_BOOTSTRAP_SERVERS"]
    assert f"INTERNAL://{internal}" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_bind_mounts_exist():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_worker_metrics_reachable_from_other_containers():
    env = _env(SERVICES["worker"])
    assert env["COPULSE_BIND_HOST"] == "0.0.0.0"


def test_prometheus_scrapes_the_worker_and_loads_the_rules():
    config = yaml.safe_load((REPO / "deploy/docker/prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"worker:{DEFAULTS.metrics_port}" in targets
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["prometheus"]["volumes"] if v.startswith("./")}
    (rules,) = config["rule_files"]
    mount_point = next(m for m in mounts if rules.startswith(m + "/"))
    assert mounts[mount_point] == "./deploy/prometheus"
    # the same files the local Prometheus loads (deploy/prometheus/prometheus.yml: rules/*.yml)
    local = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    assert local["rule_files"] == [rules[len(mount_point) + 1 :]]


def test_named_volumes_are_declared():
    declared = set(COMPOSE.get("volumes") or {})
    used = {
        str(v).split(":", 1)[0]
        for s in SERVICES.values()
        for v in s.get("volumes", [])
        if not str(v).startswith((".", "/"))
    }
    assert used and used <= declared
