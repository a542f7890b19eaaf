"""The one typed settings object of copulse.

Every knob is an environment variable with the ``COPULSE_`` prefix (``COPULSE_KAFKA_BOOTSTRAP_SERVERS``,
``COPULSE_CLICKHOUSE_URL``, ...). Defaults point at the local stack started by ``make up``.
List values are given as JSON (``COPULSE_GRANULARITIES='["1m","1h"]'``).
Secrets (passwords) are ``SecretStr``: they never appear in ``repr`` or logs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Dimensions a KPI slice can group by (columns of the KPI table).
DIMENSIONS = ("channel", "region", "category", "segment", "product_id", "feature")

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> int:
    """'1m' -> 60, '1h' -> 3600. Raises ValueError with a hint otherwise."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"bad duration {text!r}: write a positive number and a unit s, m, h or d, e.g. '1m'")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COPULSE_", extra="ignore", frozen=True)

    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = "localhost:9092"
    partitions: int = Field(6, ge=1, description="partition count for topics copulse creates")
    replication_factor: int = Field(1, ge=1)
    schema_registry_url: str | None = None
    topic_purchases: str = "copulse.purchases"
    topic_usage: str = "copulse.usage"
    topic_feedback: str = "copulse.feedback"
    topic_dlq: str = "copulse.dlq"
    topic_late: str = "copulse.late"

    # --- Worker (Faust) ----------------------------------------------------------------------
    app_id: str = "copulse"
    worker_data_dir: str = ".local/worker"
    web_port: int = 6066
    kafka_session_timeout_seconds: float = Field(
        30.0, ge=6, description="a killed worker's partitions move to another after this long"
    )
    metrics_port: int = 9464
    bind_host: str = Field("127.0.0.1", description="address the metrics and Faust web servers listen on")

    # --- Validation --------------------------------------------------------------------------
    max_future_skew_seconds: int = Field(300, ge=0, description="events further in the future are dead-lettered")
    currency: str = Field("EUR", description="the one currency revenue is kept in; others are dead-lettered")

    # --- Windows and KPIs --------------------------------------------------------------------
    granularities: list[str] = ["1m", "1h"]
    allowed_lateness_seconds: int = Field(30, ge=0)
    idle_timeout_seconds: float = Field(60.0, gt=0)
    emit_interval_seconds: float = Field(5.0, gt=0, description="provisional results of open windows")
    slices: list[str] = [
        "overall",
        "channel",
        "region",
        "category",
        "segment",
        "product_id",
        "feature",
        "channel+region",
    ]

    # --- ClickHouse sink ---------------------------------------------------------------------
    clickhouse_url: str = "clickhouse://default@localhost:9000/copulse"
    clickhouse_password: SecretStr = SecretStr("")
    clickhouse_readonly_user: str = "copulse_reader"
    clickhouse_readonly_password: SecretStr = SecretStr("copulse_reader")
    sink_batch_rows: int = Field(5000, ge=1)
    sink_flush_seconds: float = Field(1.0, gt=0)
    sink_retry_max_seconds: float = Field(10.0, gt=0)

    # --- Prometheus KPI export ---------------------------------------------------------------
    metric_slices: list[str] = ["overall", "channel", "region"]
    metric_max_series_per_slice: int = Field(50, ge=1)

    # --- Value co-creation scorecard and index (VCI) -----------------------------------------
    scorecard_file: str | None = Field(None, description="scorecard YAML; default copulse/scorecards/default.yaml")
    vci_interval_seconds: float = Field(15.0, gt=0, description="the worker scores new final windows this often")
    vci_slices: list[str] = ["overall", "channel", "region", "category", "segment", "product_id", "channel+region"]
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
        return {"purchase": self.topic_purchases, "usage": self.topic_usage, "feedback": self.topic_feedback}

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


def slice_dimensions(name: str) -> tuple[str, ...]:
    """'overall' -> (), 'channel+region' -> ('channel', 'region')."""
    return () if name == "overall" else tuple(name.split("+"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
