"""Schema catalogue: the Avro schemas copulse ships, by their fixed schema ids.

Schema ids are the 4-byte ids of the Confluent wire frame. Without a Schema Registry
(``COPULSE_SCHEMA_REGISTRY_URL`` unset) the decoder resolves writer schemas from this catalogue; with a
registry, register the shipped ``.avsc`` files under these same ids (registry IMPORT mode) so producers
of both worlds agree. The reader schema of an event type is always its newest shipped version.

Evolution policy: FULL_TRANSITIVE (see tests/test_schema_evolution.py). Never edit a shipped ``.avsc``;
add a new version file and a new id below instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

AVRO_DIR = Path(__file__).resolve().parent / "avro"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

NAMESPACE = "io.copulse.events"


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    schema_id: int
    event_type: str  # 'purchase' | 'usage' | 'feedback'
    version: int
    path: Path


#: schema id -> (event type, version, path). Ids are fixed forever: type prefix x 100 + version.
CATALOGUE: dict[int, SchemaInfo] = {
    101: SchemaInfo(101, "purchase", 1, AVRO_DIR / "purchase.v1.avsc"),
    201: SchemaInfo(201, "usage", 1, AVRO_DIR / "usage.v1.avsc"),
    202: SchemaInfo(202, "usage", 2, AVRO_DIR / "usage.v2.avsc"),
    301: SchemaInfo(301, "feedback", 1, AVRO_DIR / "feedback.v1.avsc"),
}

#: Avro full record name -> event type (how a writer schema fetched from a registry is classified).
RECORD_NAMES: dict[str, str] = {
    f"{NAMESPACE}.PurchaseEvent": "purchase",
    f"{NAMESPACE}.UsageEvent": "usage",
    f"{NAMESPACE}.FeedbackEvent": "feedback",
}


def schema_ids(event_type: str) -> list[int]:
    """Shipped schema ids of one event type, oldest version first."""
    ids = sorted((info.version, sid) for sid, info in CATALOGUE.items() if info.event_type == event_type)
    if not ids:
        raise KeyError(f"unknown event type {event_type!r}; expected one of {sorted(RECORD_NAMES.values())}")
    return [sid for _, sid in ids]


def latest_schema_id(event_type: str) -> int:
    """Id of the newest shipped version of ``event_type`` (the reader schema, and what producers write)."""
    return schema_ids(event_type)[-1]


def schema_id_for(event_type: str, version: int) -> int:
    for sid, info in CATALOGUE.items():
        if info.event_type == event_type and info.version == version:
            return sid
    raise KeyError(f"no shipped schema for {event_type} v{version}")


@lru_cache(maxsize=None)
def _load_text(schema_id: int) -> str:
    return CATALOGUE[schema_id].path.read_text(encoding="utf-8")


def load_schema(schema_id: int) -> dict:
    """The raw (unparsed) JSON schema of a shipped id, as a fresh dict. KeyError for unknown ids."""
    if schema_id not in CATALOGUE:
        raise KeyError(schema_id)
    return json.loads(_load_text(schema_id))


def reader_schema(event_type: str) -> dict:
    """The raw reader schema of an event type: its newest shipped version."""
    return load_schema(latest_schema_id(event_type))


def event_type_of(schema: dict) -> str | None:
    """'purchase' | 'usage' | 'feedback' from a raw or parsed record schema, None if it is not ours."""
    if not isinstance(schema, dict):
        return None
    name = schema.get("name", "")
    if "." not in name:
        name = f"{schema.get('namespace', '')}.{name}"
    return RECORD_NAMES.get(name)
