"""The scorecard file: the shipped default, validation errors with line numbers and fixes, content versions."""

from __future__ import annotations

import textwrap

import pytest

from copulse.cli import main
from copulse.readmodel import SELECT_COLUMNS
from copulse.scorecard.catalogue import SCORECARD_KPIS
from copulse.scorecard.definition import (
    ScorecardError,
    default_scorecard_path,
    load_scorecard,
    parse_scorecard,
    scorecard_path,
)
from copulse.settings import Settings

MINIMAL = textwrap.dedent(
    """\
    name: tiny
    perspectives:
      money:
        weight: 1
        kpis:
          aov:
            target: 100
            floor: 50
    """
)


def errors_of(text: str) -> str:
    with pytest.raises(ScorecardError) as info:
        parse_scorecard(textwrap.dedent(text), source="card.yaml")
    return str(info.value)


def test_the_shipped_default_is_valid_and_covers_every_perspective():
    card = load_scorecard()
    assert card.source == str(default_scorecard_path())
    assert card.perspective_names == ("financial", "satisfaction", "participation", "loyalty", "usage",
                                    "feedback")
    kpis = {p.name: [k.name for k in p.kpis] for p in card.targets(3600)}
    assert kpis == {
        "financial": ["revenue_per_active_consumer", "aov", "orders_per_active_consumer"],
        "satisfaction": ["csat_avg", "nps", "survey_response_rate"],
        "participation": ["participation_rate", "co_creation_per_active_consumer"],
        "loyalty": ["returning_purchaser_rate"],
        "usage": ["feature_adoption", "avg_session_seconds"],
        "feedback": ["answers_per_feedback", "cases_closed_per_follow_up", "ideas_shipped_per_100_ideas"],
    }
    assert sum(p.weight for p in card.targets(3600)) == pytest.approx(1.0)
    assert card.min_perspectives == 3
    # 1m windows have their own targets where distinct counts differ, the rest as for 1h
    by_name = {k.name: k for p in card.targets(60) for k in p.kpis}
    assert by_name["participation_rate"].target == 0.25 and by_name["participation_rate"].min_sample == 20
    assert by_name["csat_avg"].target == 4.4 and by_name["csat_avg"].min_sample == 10
    assert card.version_id.startswith("2-") and len(card.version_id) == 14


def test_settings_choose_the_file(tmp_path, monkeypatch):
    own = tmp_path / "own.yaml"
    own.write_text(MINIMAL)
    monkeypatch.setenv("COPULSE_SCORECARD_FILE", str(own))
    settings = Settings()
    assert scorecard_path(settings) == own
    card = load_scorecard(settings=settings)
    assert card.name == "tiny" and card.perspective_names == ("money",)
    assert scorecard_path(Settings(scorecard_file=None)) == default_scorecard_path()


def test_version_is_a_content_hash_plus_the_human_version():
    base = parse_scorecard(MINIMAL)
    assert len(base.version_id) == 12 and int(base.version_id, 16) >= 0
    # comments, key order, formatting and spelled-out defaults do not change the version
    same = parse_scorecard(
        "# comment\nperspectives: {money: {kpis: {aov: {floor: 50.0, target: 100, direction: higher, weight: 1}},"
        " weight: 1}}\nname: tiny\n"
    )
    assert same.version_id == base.version_id
    changed = parse_scorecard(MINIMAL.replace("target: 100", "target: 110"))
    assert changed.version_id != base.version_id
    labelled = parse_scorecard('version: "2024.2"\n' + MINIMAL)
    assert labelled.version_id.startswith("2024.2-") and labelled.version_id != base.version_id


def test_wrong_value_names_the_line_the_field_and_the_fix():
    text = errors_of(
        """\
        perspectives:
          money:
            weight: 1
            kpis:
              aov:
                target: 100
                direction: up
        """
    )
    assert "card.yaml is invalid (1 problem)" in text
    assert "line 7: perspectives.money.kpis.aov.direction" in text
    assert "'higher' or 'lower'" in text and "'up'" in text


def test_unknown_kpi_and_unknown_field_get_suggestions():
    text = errors_of(
        """\
        perspectives:
          voice:
            weight: 1
            kpis:
              csat_average:
                target: 4.5
              nps:
                target: 40
                wieght: 2
        """
    )
    assert "line 5: perspectives.voice.kpis.csat_average: unknown KPI 'csat_average' (did you mean 'csat_avg'?)" in text
    assert "line 9: perspectives.voice.kpis.nps.wieght: unknown field 'wieght' (did you mean 'weight'?)" in text
    assert "2 problems" in text


def test_floor_on_the_wrong_side_of_the_target():
    text = errors_of(
        """\
        perspectives:
          speed:
            weight: 1
            kpis:
              avg_session_seconds:
                target: 60
                floor: 30
                direction: lower
                by_granularity:
                  1m: {target: 10, floor: 20}
              csat_avg: {target: 4, floor: 4.5}
        """
    )
    assert "line 7: perspectives.speed.kpis.avg_session_seconds.floor: floor 30 must be above target 60 when lower" in text
    assert "perspectives.speed.kpis.csat_avg.floor: floor 4.5 must be below target 4 when higher" in text
    assert "line 11" in text


def test_missing_fields_and_bad_types():
    text = errors_of(
        """\
        perspectives:
          money:
            kpis:
              aov:
                floor: 10
                min_sample: lots
        """
    )
    assert "line 2: perspectives.money.weight: Field required; add 'weight:'" in text
    assert "line 4: perspectives.money.kpis.aov.target: Field required; add 'target:'" in text
    assert "line 6: perspectives.money.kpis.aov.min_sample" in text and "whole number" in text


def test_additive_kpis_need_per_and_ratios_refuse_it():
    text = errors_of(
        """\
        perspectives:
          money:
            weight: 1
            kpis:
              revenue: {target: 1000}
              aov: {target: 300, per: 1h}
              orders: {target: 10, per: often}
        """
    )
    assert "line 5: perspectives.money.kpis.revenue: 'revenue' adds up over the window" in text
    assert "line 6: perspectives.money.kpis.aov.per: 'aov' is a ratio" in text
    assert "line 7: perspectives.money.kpis.orders.per: bad duration 'often'" in text


def test_target_without_floor_must_be_positive_and_weights_must_count():
    text = errors_of(
        """\
        min_perspectives: 2
        perspectives:
          voice:
            weight: 0
            kpis:
              nps: {target: -10}
        """
    )
    assert "perspectives.voice.kpis.nps.target: target -10 needs a 'floor'" in text
    assert "perspectives: every perspective has weight 0" in text
    assert "min_perspectives: is 2 but only 0 perspective(s)" in text


def test_duplicate_keys_and_yaml_syntax_errors():
    text = errors_of(
        """\
        perspectives:
          money:
            weight: 1
            weight: 2
            kpis:
              aov: {target: 100}
        """
    )
    assert "line 4: perspectives.money.weight: duplicate key (first given on line 3)" in text
    text = errors_of("perspectives:\n  money: [unclosed\n")
    assert "not valid YAML" in text and "line 3" in text
    assert "is empty" in errors_of("# nothing\n")


def test_a_kpi_counts_in_one_perspective_only():
    text = errors_of(
        """\
        perspectives:
          a: {weight: 1, kpis: {nps: {target: 40}}}
          b: {weight: 1, kpis: {nps: {target: 50}}}
        """
    )
    assert "KPI 'nps' is already in perspective 'a'" in text


def test_missing_file(tmp_path):
    with pytest.raises(ScorecardError, match="file not found; fix COPULSE_SCORECARD_FILE"):
        load_scorecard(tmp_path / "nope.yaml")


def test_catalogue_samples_are_kpi_view_columns():
    for kdef in SCORECARD_KPIS.values():
        assert kdef.sample_column in SELECT_COLUMNS, kdef


def test_cli_prints_the_scorecard_and_reports_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["scorecard", "--granularity", "1m"]) == 0
    out = capsys.readouterr().out
    assert "copulse default" in out and "Participation rate" in out and "0.25" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("floor: 50", "floor: 150"))
    assert main(["scorecard", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "line 8: perspectives.money.kpis.aov.floor: floor 150 must be below target 100" in err
