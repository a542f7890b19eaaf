"""The one typed settings object of copulse.

Every knob is an environment variable with the ``COPULSE_`` prefix (``COPULSE_KAFKA_BOOTSTRAP_SERVERS``,
``COPULSE_CLICKHOUSE_URL``, ...). Defaults point at the local stack started by ``make up``.
List values are given as JSON (``COPULSE_GRANULARITIES='["1m","1h"]'``).
Secrets (passwords) are ``SecretStr``: they never appear in ``repr`` or logs.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Dimensions a KPI slice can group by (columns of the KPI table).
DIMENSIONS = ("channel", "region", "category", "segment", "product_id", "feature")

_DURATION = re.compile(r"^(\d+)([smhd])$")
_PROMETHEUS_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(text: str, *, prometheus: bool = False) -> int:
    """'1m' -> 60, '1h' -> 3600: window sizes and scorecard periods are one positive number and a unit s, m, h
    or d. ``prometheus=True`` takes any Prometheus duration ('1h30m', '500ms', '1w'), in whole seconds.
    Raises ValueError with a hint otherwise."""
    text = text.strip()
    if prometheus:
        if not _PROMETHEUS_DURATION.match(text):
            raise ValueError(f"{text!r} is not a Prometheus duration such as 30s, 5m, 1h, 1d, 1w")
        return int(sum(int(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text)))
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"bad duration {text!r}: write a positive number and a unit s, m, h or d, e.g. '1m'")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COPULSE_", extra="ignore", frozen=True)

    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers (host:port, comma-separated)")
    partitions: int = Field(6, ge=1, description="partition count for topics copulse creates")
    replication_factor: int = Field(1, ge=1, description="replication factor for topics copulse creates")
    schema_registry_url: str | None = Field(None, description="Schema Registry URL; unset = the schemas shipped in schemas/ with fixed ids")
    topic_purchases: str = Field("copulse.purchases", description="purchase events topic")
    topic_usage: str = Field("copulse.usage", description="usage events topic")
    topic_feedback: str = Field("copulse.feedback", description="feedback events topic")
    topic_responses: str = Field("copulse.responses", description="enterprise events topic: responses, idea status changes, closed cases")
    topic_dlq: str = Field("copulse.dlq", description="dead-letter topic (original key and bytes, reason headers)")
    topic_late: str = Field("copulse.late", description="events too late for their window")

    # --- Worker (Faust) ----------------------------------------------------------------------
    app_id: str = Field("copulse", description="consumer group of the source topics and prefix of the state changelog topic")
    worker_data_dir: str = Field(".local/worker", description="Faust data directory")
    web_port: int = Field(6066, description="Faust web port")
    kafka_session_timeout_seconds: float = Field(
        30.0, ge=6, description="a killed worker's partitions move to another after this long"
    )
    kafka_max_poll_interval_seconds: float = Field(
        300.0, ge=10, description="a worker that handles no batch this long (e.g. ClickHouse down longer) leaves the group"
    )
    startup_wait_seconds: float = Field(
        300.0, ge=0, description="a worker started while ClickHouse or Kafka is unreachable waits this long for them"
    )
    metrics_port: int = Field(9464, description="Prometheus metrics port of the worker")
    bind_host: str = Field("127.0.0.1", description="address the metrics and Faust web servers listen on")

    # --- Validation --------------------------------------------------------------------------
    max_future_skew_seconds: int = Field(300, ge=0, description="events further in the future are dead-lettered")
    currency: str = Field("EUR", description="the one currency revenue is kept in; others are dead-lettered")

    # --- Windows and KPIs --------------------------------------------------------------------
    granularities: list[str] = Field(["1m", "1h"], description="tumbling window sizes (s, m, h, d; must divide a day)")
    allowed_lateness_seconds: int = Field(30, ge=0, description="watermark = highest event time seen - this")
    idle_timeout_seconds: float = Field(60.0, gt=0, description="a source partition silent this long stops holding the watermark")
    emit_interval_seconds: float = Field(5.0, gt=0, description="provisional results of open windows")
    slices: list[str] = Field(
        [
            "overall",
            "channel",
            "region",
            "category",
            "segment",
            "product_id",
            "feature",
            "channel+region",
        ],
        description="grouping sets: 'overall' or dimensions joined by '+'",
    )

    # --- ClickHouse sink ---------------------------------------------------------------------
    clickhouse_url: str = Field("clickhouse://default@localhost:9000/copulse", description="ClickHouse native URL clickhouse://user@host:port/database")
    clickhouse_password: SecretStr = Field(SecretStr(""), description="password of the ClickHouse writer user")
    clickhouse_readonly_user: str = Field("copulse_reader", description="read-only ClickHouse user for dashboards and `copulse kpis`")
    clickhouse_readonly_password: SecretStr = Field(SecretStr("copulse_reader"), description="its password")
    sink_batch_rows: int = Field(5000, ge=1, description="flush after this many messages")
    sink_flush_seconds: float = Field(1.0, gt=0, description="flush at least this often (one insert per table per flush)")
    sink_retry_max_seconds: float = Field(10.0, gt=0, description="cap of the retry backoff while ClickHouse is down")

    # --- Prometheus KPI export ---------------------------------------------------------------
    metric_slices: list[str] = Field(["overall", "channel", "region"], description="slices exported as copulse_kpi_* gauges")
    metric_max_series_per_slice: int = Field(50, ge=1, description="cardinality cap of those gauges per slice")

    # --- Value co-creation scorecard and index (VCI) -----------------------------------------
    scorecard_file: str | None = Field(None, description="scorecard YAML; default copulse/scorecard/default.yaml")
    vci_interval_seconds: float = Field(15.0, gt=0, description="the worker scores new final windows this often")
    vci_slices: list[str] = Field(
        ["overall", "channel", "region", "category", "segment", "product_id", "channel+region"],
        description="slices the worker scores with the value co-creation index",
    )
    vci_lookback_seconds: int = Field(2 * 86400, ge=0, description="the worker scores final windows this recent")
    vci_batch_rows: int = Field(20000, ge=1, description="at most this many windows per scoring run")

    @field_validator("granularities")
    @classmethod
    def _check_granularities(cls, value: list[str]) -> list[str]:
        seconds = [duration_seconds(v) for v in value]
        if not seconds:
            raise ValueError("COPULSE_GRANULARITIES needs at least one window size, e.g. '[\"1m\"]'")
        if any(86400 % s for s in seconds):
            raise ValueError("every granularity must divide a day evenly (e.g. 1m, 5m, 1h)")
        return value

    @field_validator("slices", "metric_slices", "vci_slices")
    @classmethod
    def _check_slices(cls, value: list[str]) -> list[str]:
        for name in value:
            dims = slice_dimensions(name)
            unknown = [d for d in dims if d not in DIMENSIONS]
            if unknown:
                raise ValueError(
                    f"slice {name!r} names unknown dimension(s) {unknown}; use 'overall' or "
                    f"dimensions from {list(DIMENSIONS)} joined by '+'"
                )
        return value

    @field_validator("currency")
    @classmethod
    def _check_currency(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError("COPULSE_CURRENCY must be an ISO 4217 code such as 'EUR'")
        return value

    # --- derived values ----------------------------------------------------------------------
    @property
    def granularity_seconds(self) -> list[int]:
        return sorted(duration_seconds(v) for v in self.granularities)

    @property
    def source_topics(self) -> dict[str, str]:
        """event type -> topic name."""
        return {"purchase": self.topic_purchases, "usage": self.topic_usage, "feedback": self.topic_feedback,
                "response": self.topic_responses}

    @property
    def clickhouse(self) -> dict:
        """Keyword arguments for ``clickhouse_driver.Client`` (password from its own variable)."""
        url = urlsplit(self.clickhouse_url)
        if url.scheme not in ("clickhouse", "clickhouses"):
            raise ValueError("COPULSE_CLICKHOUSE_URL must look like clickhouse://user@host:9000/database")
        return {
            "host": url.hostname or "localhost",
            "port": url.port or 9000,
            "user": url.username or "default",
            "password": self.clickhouse_password.get_secret_value() or (url.password or ""),
            "database": (url.path or "/copulse").lstrip("/") or "copulse",
            "secure": url.scheme == "clickhouses",
        }


def markdown_table() -> str:
    """The README's configuration table: every field with its variable, default and meaning."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        default = info.default
        if isinstance(default, SecretStr):
            default = "(set)" if default.get_secret_value() else ""
        elif isinstance(default, list):
            default = json.dumps(default)
        shown = f"`{default}`" if default not in (None, "") else ""
        lines.append(f"| `COPULSE_{name.upper()}` | {shown} | {info.description or ''} |")
    return "\n".join(lines)


def slice_dimensions(name: str) -> tuple[str, ...]:
    """'overall' -> (), 'channel+region' -> ('channel', 'region')."""
    return () if name == "overall" else tuple(name.split("+"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
