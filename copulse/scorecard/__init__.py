"""The value co-creation scorecard: catalogue.py (THE KPI catalogue), definition.py (the scorecard file:
model, validation, loading), index.py (the VCI computation), job.py (the scoring job and ``copulse vci``),
exporter.py (the VCI gauges) and default.yaml (the shipped scorecard)."""
