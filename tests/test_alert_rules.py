"""The Prometheus rules: valid (`promtool check rules`), unit-tested (`promtool test rules`, one case where every
alert fires and one where it does not), and exactly what deploy/prometheus/render_rules.py renders from
deploy/prometheus/thresholds.yml."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROM = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def load_renderer():
    spec = importlib.util.spec_from_file_location("copulse_render_rules", PROM / "render_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is missing: `make provision` installs Debian's prometheus package (gives promtool)")
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def alerts_in(files) -> set[str]:
    names = set()
    for path in files:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {r["alert"] for r in group["rules"] if "alert" in r}
    return names


def test_rule_files_exist():
    names = {p.name for p in RULE_FILES}
    assert {"copulse_kpi_recording.yml", "copulse_kpi_alerts.yml", "copulse_pipeline_alerts.yml",
            "copulse_feedback_alerts.yml"} <= names


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path):
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config_loads_the_rules():
    result = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RULE_FILES:
        assert path.name in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", *[str(p) for p in TEST_FILES])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES), result.stdout


def test_every_alert_has_a_firing_and_a_silent_case():
    fires: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text()).get("tests", []):
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = alerts_in(RULE_FILES)
    assert len(alerts) >= 15
    assert alerts - fires == set(), "alerts without a test where they fire"
    assert alerts - silent == set(), "alerts without a test where they stay silent"


def test_committed_rules_equal_the_render_of_thresholds_yml():
    renderer = load_renderer()
    rendered = renderer.render(renderer.load_params())
    assert sorted(rendered) == sorted(p.name for p in RULE_FILES)
    for name, text in rendered.items():
        assert (PROM / "rules" / name).read_text() == text, (
            f"{name} differs from the render: run python deploy/prometheus/render_rules.py"
        )
    check = subprocess.run([sys.executable, str(PROM / "render_rules.py"), "--check"], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr


def test_changed_thresholds_render_and_stay_valid(tmp_path):
    renderer = load_renderer()
    params = renderer.load_params(
        overrides={
            "kpi_alerts": {
                "granularity": "1m",
                "matchers": 'slice="overall"',
                "alerts": {"csat": {"drop_ratio": 0.8, "min_volume": 5, "for": "2m"}},
            },
            "pipeline_alerts": {"dlq_ratio": 0.2},
            "feedback_alerts": {"response_percentile": 50, "response_max_seconds": 86400, "backlog_class": "all"},
        }
    )
    files = renderer.render(params)
    csat = next(
        r for r in yaml.safe_load(files["copulse_kpi_alerts.yml"])["groups"][0]["rules"] if r["alert"] == "CopulseCsatDrop"
    )
    assert 'copulse:kpi_csat_avg{granularity="60", slice="overall"}' in csat["expr"]
    assert "< 0.8 * (" in csat["expr"] and ">= 5" in csat["expr"] and csat["for"] == "2m"
    assert "> 0.2\n" in files["copulse_pipeline_alerts.yml"]
    feedback = yaml.safe_load(files["copulse_feedback_alerts.yml"])["groups"][0]["rules"]
    assert 'percentile="50"' in feedback[0]["expr"] and "> 86400\n" in feedback[0]["expr"]
    assert 'copulse_feedback_backlog_recent{job="copulse", class="all"} offset 6h' in feedback[1]["expr"]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = promtool("check", "rules", *[str(tmp_path / n) for n in files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_threshold_is_rejected_with_a_hint(tmp_path):
    renderer = load_renderer()
    params = renderer.load_params(overrides={"kpi_alerts": {"alerts": {"nps": {"for": "ten minutes"}}}})
    with pytest.raises(ValueError, match="nps.for.*Prometheus duration"):
        renderer.render(params)
    bad = tmp_path / "bad.yml"
    bad.write_text("kpi_alerts: {granularity: soon}\n")
    result = subprocess.run(
        [sys.executable, str(PROM / "render_rules.py"), "--params", str(bad), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "bad" in result.stderr


def test_ratio_rules_guard_every_division():
    groups = yaml.safe_load((PROM / "rules" / "copulse_kpi_recording.yml").read_text())["groups"]
    ratios = {r["record"]: r["expr"] for g in groups for r in g["rules"] if ":sum" not in r["record"]}
    for name in ("participation_rate", "csat_avg", "csat_pct", "nps", "survey_response_rate", "aov",
                 "returning_purchaser_rate", "avg_session_seconds", "feature_adoption"):
        expr = ratios[f"copulse:kpi_{name}"]
        assert expr.rstrip().endswith("> 0)"), f"{name}: denominator not guarded: {expr}"
    sums = [r["expr"] for g in groups for r in g["rules"] if r["record"].endswith(":sum")]
    assert sums and all(e.startswith("sum without(instance, job)") for e in sums)
