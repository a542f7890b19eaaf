"""copulse: real-time value co-creation KPIs (Kafka -> Faust -> ClickHouse + Prometheus)."""

__version__ = "0.1.0"
