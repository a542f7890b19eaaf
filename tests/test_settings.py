"""The settings object: defaults, validation messages, secrets, and the configuration table of docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from copulse.settings import Settings, duration_seconds, markdown_table, slice_dimensions

CONFIGURATION_DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_table_is_current():
    assert markdown_table() in CONFIGURATION_DOC.read_text(), (
        "docs/configuration.md's configuration table is stale: paste the output of "
        "python -c 'from copulse.settings import markdown_table; print(markdown_table())'"
    )


def test_every_setting_is_documented():
    assert all(info.description for info in Settings.model_fields.values())


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("COPULSE_GRANULARITIES", '["5m", "1h"]')
    monkeypatch.setenv("COPULSE_CLICKHOUSE_URL", "clickhouse://writer@ch.example:9440/kpis")
    monkeypatch.setenv("COPULSE_CLICKHOUSE_PASSWORD", "s3cret")
    s = Settings()
    assert s.granularity_seconds == [300, 3600]
    assert s.clickhouse == {"host": "ch.example", "port": 9440, "user": "writer", "password": "s3cret",
                            "database": "kpis", "secure": False}
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())


@pytest.mark.parametrize("field,value,hint", [
    ("granularities", ["7m"], "divide a day"),
    ("granularities", ["1x"], "unit s, m, h or d"),
    ("slices", ["channel+colour"], "unknown dimension"),
    ("currency", "euro", "ISO 4217"),
])
def test_invalid_values_say_what_to_do(field, value, hint):
    with pytest.raises(ValidationError, match=hint):
        Settings(**{field: value})


def test_helpers():
    assert duration_seconds("90s") == 90 and slice_dimensions("overall") == ()
    assert slice_dimensions("channel+region") == ("channel", "region")
