"""The schema catalogue: the Avro schemas copulse ships, by their fixed schema ids.

The data lives in the top-level ``schemas/avro`` folder: one ``<event type>.v<version>.avsc`` per schema
version and ``schema_ids.json`` giving each file its schema id. Everything else (event type, version,
record name) is read from the files themselves.

Schema ids are the 4-byte ids of the Confluent wire frame, fixed forever (type prefix x 100 + version).
Without a Schema Registry (``COPULSE_SCHEMA_REGISTRY_URL`` unset) the decoder resolves writer schemas from
this catalogue; with a registry, register the shipped ``.avsc`` files under these same ids (registry
IMPORT mode) so producers of both worlds agree. The reader schema of an event type is always its newest
shipped version.

Evolution policy: FULL_TRANSITIVE (see tests/test_schema_evolution.py). Never edit a shipped ``.avsc``;
add a new version file and its id in ``schema_ids.json`` instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

#: the data folder ``schemas/`` (avro/, golden/, clickhouse/), shipped beside the Python packages: in the
#: source tree, in an editable install and in the wheel alike
SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"
AVRO_DIR = SCHEMAS_DIR / "avro"
SCHEMA_IDS_FILE = AVRO_DIR / "schema_ids.json"
_FILE_NAME = re.compile(r"(?P<event_type>[a-z_]+)\.v(?P<version>[0-9]+)\.avsc")


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    schema_id: int
    event_type: str  # 'purchase' | 'usage' | 'feedback' | 'response'
    version: int
    path: Path
    record_name: str  # Avro full name of the record, e.g. io.copulse.events.UsageEvent


def _full_name(schema: dict) -> str:
    name = schema.get("name", "")
    return name if "." in name else f"{schema.get('namespace', '')}.{name}"


def _read_catalogue() -> dict[int, SchemaInfo]:
    ids: dict[str, int] = json.loads(SCHEMA_IDS_FILE.read_text(encoding="utf-8"))
    files = {path.name for path in AVRO_DIR.glob("*.avsc")}
    if files != set(ids):
        raise RuntimeError(
            f"{SCHEMA_IDS_FILE} must name every .avsc in {AVRO_DIR} exactly once; "
            f"without an id: {sorted(files - set(ids))}, missing files: {sorted(set(ids) - files)}"
        )
    catalogue = {}
    for file_name, schema_id in ids.items():
        match = _FILE_NAME.fullmatch(file_name)
        if match is None:
            raise RuntimeError(f"{AVRO_DIR / file_name}: name it <event type>.v<version>.avsc")
        path = AVRO_DIR / file_name
        record_name = _full_name(json.loads(path.read_text(encoding="utf-8")))
        catalogue[schema_id] = SchemaInfo(schema_id, match["event_type"], int(match["version"]), path, record_name)
    return catalogue


#: schema id -> (event type, version, path, record name)
CATALOGUE: dict[int, SchemaInfo] = _read_catalogue()

#: Avro full record name -> event type (how a writer schema fetched from a registry is classified).
RECORD_NAMES: dict[str, str] = {info.record_name: info.event_type for info in CATALOGUE.values()}


def schema_ids(event_type: str) -> list[int]:
    """Shipped schema ids of one event type, oldest version first."""
    ids = sorted((info.version, sid) for sid, info in CATALOGUE.items() if info.event_type == event_type)
    if not ids:
        raise KeyError(f"unknown event type {event_type!r}; expected one of {sorted(RECORD_NAMES.values())}")
    return [sid for _, sid in ids]


def latest_schema_id(event_type: str) -> int:
    """Id of the newest shipped version of ``event_type`` (the reader schema, and what producers write)."""
    return schema_ids(event_type)[-1]


@cache
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
    """The event type ('purchase', 'usage', ...) of a raw or parsed record schema, None if it is not ours."""
    if not isinstance(schema, dict):
        return None
    return RECORD_NAMES.get(_full_name(schema))
