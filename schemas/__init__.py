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
from functools import cache
from pathlib import Path
from typing import Any

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
    """'purchase' | 'usage' | 'feedback' from a raw or parsed record schema, None if it is not ours."""
    if not isinstance(schema, dict):
        return None
    name = schema.get("name", "")
    if "." not in name:
        name = f"{schema.get('namespace', '')}.{name}"
    return RECORD_NAMES.get(name)


# ==================================================================================================
# FULL_TRANSITIVE compatibility checking
# ==================================================================================================
#
# FULL_TRANSITIVE = every version can read data written by every other version, in both directions:
# backward (the new schema reads data of each older one) and forward (each older schema reads data of
# the new one). Structurally that means, following the Avro schema resolution rules in both directions:
#
# * a field added or removed needs a default (the side that lacks it fills the default in);
# * a field's type may not change: the Avro promotions (int -> long -> float -> double, string <-> bytes)
#   only work from writer to reader, so a promotion breaks the other direction;
# * enum symbols may be neither removed (new readers cannot read old data) nor added (old readers cannot
#   read new data) -- copulse enums have no enum default on purpose: an unknown symbol is a dead letter;
# * record / enum / fixed names, fixed sizes and logical types (decimal precision and scale) stay equal.
#
# On top of the structural rules, sample records of each schema are actually resolved through the other
# with fastavro, both ways.

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class _Names:
    """Named types of one schema, by full name, for resolving references."""

    def __init__(self, schema: Any):
        self.types: dict[str, dict] = {}
        self._collect(schema, "")

    def _collect(self, s: Any, ns: str) -> None:
        if isinstance(s, list):
            for b in s:
                self._collect(b, ns)
        elif isinstance(s, dict):
            kind = s.get("type")
            if kind in ("record", "error", "enum", "fixed"):
                full = _fullname(s, ns)
                self.types[full] = s
                ns = full.rpartition(".")[0]
                for f in s.get("fields", ()) if kind in ("record", "error") else ():
                    self._collect(f.get("type"), ns)
            elif kind == "array":
                self._collect(s.get("items"), ns)
            elif kind == "map":
                self._collect(s.get("values"), ns)
            elif isinstance(kind, (dict, list)):
                self._collect(kind, ns)

    def resolve(self, s: Any, ns: str) -> tuple[Any, str]:
        """(schema with references replaced by their definition, namespace for nested names)."""
        if isinstance(s, str) and s not in _PRIMITIVES:
            full = s if "." in s else (f"{ns}.{s}" if ns else s)
            if full not in self.types and s in self.types:
                full = s
            target = self.types.get(full)
            if target is None:
                raise ValueError(f"unknown named type {s!r}")
            return target, full.rpartition(".")[0]
        if isinstance(s, dict) and s.get("type") in ("record", "error", "enum", "fixed"):
            return s, _fullname(s, ns).rpartition(".")[0]
        if isinstance(s, dict) and isinstance(s.get("type"), (str, list)) and s.get("type") not in (
            "array", "map", "record", "error", "enum", "fixed"
        ):
            return s, ns  # {"type": "long", "logicalType": ...}
        return s, ns


def _fullname(s: dict, ns: str) -> str:
    name = s.get("name", "")
    if "." in name:
        return name
    ns = s.get("namespace", ns) or ""
    return f"{ns}.{name}" if ns else name


def _kind(s: Any) -> str:
    if isinstance(s, list):
        return "union"
    if isinstance(s, str):
        return s
    kind = s.get("type")
    return kind if isinstance(kind, str) else _kind(kind)


def _logical(s: Any) -> tuple:
    if isinstance(s, dict):
        return (s.get("logicalType"), s.get("precision"), s.get("scale", 0 if s.get("logicalType") == "decimal" else None))
    return (None, None, None)


def _can_read(writer: Any, reader: Any, wn: _Names, rn: _Names, wns: str, rns: str, path: str, out: list[str], seen: set) -> None:
    """Append to ``out`` why data written with ``writer`` cannot be read with ``reader`` (Avro resolution)."""
    writer, wns = wn.resolve(writer, wns)
    reader, rns = rn.resolve(reader, rns)
    wk, rk = _kind(writer), _kind(reader)
    if wk == "union":
        for branch in writer:  # every branch the writer may have written must be readable
            _can_read(branch, reader, wn, rn, wns, rns, path, out, seen)
        return
    if rk == "union":
        for branch in reader:
            trial: list[str] = []
            _can_read(writer, branch, wn, rn, wns, rns, path, trial, seen)
            if not trial:
                return
        out.append(f"{path}: writer type {wk} matches no branch of the reader union")
        return
    if wk in _PRIMITIVES and rk in _PRIMITIVES:
        if rk not in _PROMOTIONS.get(wk, {wk}):
            out.append(f"{path}: type changed from {wk} (writer) to {rk} (reader), not a legal promotion")
        elif _logical(writer) != _logical(reader):
            out.append(f"{path}: logical type changed from {_logical(writer)} to {_logical(reader)}")
        return
    if wk != rk:
        out.append(f"{path}: type changed from {wk} to {rk}")
        return
    if wk in ("record", "error", "enum", "fixed"):
        wname, rname = _fullname(writer, wns), _fullname(reader, rns)
        aliases = {a if "." in a else f"{rns}.{a}" for a in reader.get("aliases", ())}
        if wname != rname and wname not in aliases:
            out.append(f"{path}: {wk} name changed from {wname} to {rname}")
            return
        key = (id(writer), id(reader))
        if key in seen:  # recursive types
            return
        seen.add(key)
    if wk == "fixed":
        if writer.get("size") != reader.get("size"):
            out.append(f"{path}: fixed size changed from {writer.get('size')} to {reader.get('size')}")
        elif _logical(writer) != _logical(reader):
            out.append(f"{path}: logical type changed from {_logical(writer)} to {_logical(reader)}")
    elif wk == "enum":
        missing = [s for s in writer.get("symbols", ()) if s not in reader.get("symbols", ())]
        if missing and "default" not in reader:
            out.append(f"{path}: enum symbol(s) {missing} written but unknown to the reader (and it has no enum default)")
    elif wk == "array":
        _can_read(writer["items"], reader["items"], wn, rn, wns, rns, f"{path}[]", out, seen)
    elif wk == "map":
        _can_read(writer["values"], reader["values"], wn, rn, wns, rns, f"{path}{{}}", out, seen)
    elif wk in ("record", "error"):
        wfields = {f["name"]: f for f in writer.get("fields", ())}
        for rf in reader.get("fields", ()):
            names = [rf["name"], *rf.get("aliases", ())]
            wf = next((wfields[n] for n in names if n in wfields), None)
            if wf is None:
                if "default" not in rf:
                    out.append(f"{path}.{rf['name']}: field missing in the writer and the reader has no default")
            else:
                _can_read(wf["type"], rf["type"], wn, rn, wns, rns, f"{path}.{rf['name']}", out, seen)


def sample_records(schema: dict, count: int = 8) -> list[dict]:
    """Deterministic sample records of a record schema covering every enum symbol and union branch."""
    names = _Names(schema)

    def value(s: Any, ns: str, i: int, depth: int) -> Any:
        s, ns = names.resolve(s, ns)
        kind = _kind(s)
        if kind == "union":
            branches = [b for b in s if depth < 4 or _kind(names.resolve(b, ns)[0]) not in ("record", "array", "map")]
            return value(branches[i % len(branches)], ns, i // len(branches) + i, depth + 1)
        logical = _logical(s)[0]
        if logical == "decimal":
            from decimal import Decimal

            return Decimal(1000 + 137 * i).scaleb(-s.get("scale", 0))
        if kind == "null":
            return None
        if kind == "boolean":
            return i % 2 == 0
        if kind in ("int", "long"):
            return 1_700_000_000_000 + i if logical and logical.startswith("timestamp") else i * 3 + 1
        if kind in ("float", "double"):
            return i + 0.5
        if kind == "string":
            return f"s{i}"
        if kind == "bytes":
            return bytes([i % 256]) * 3
        if kind == "fixed":
            return bytes([i % 256]) * s["size"]
        if kind == "enum":
            symbols = s["symbols"]
            return symbols[i % len(symbols)]
        if kind == "array":
            return [value(s["items"], ns, i + k, depth + 1) for k in range(i % 3)] if depth < 4 else []
        if kind == "map":
            return {f"k{k}": value(s["values"], ns, i + k, depth + 1) for k in range(i % 3)} if depth < 4 else {}
        if kind in ("record", "error"):
            inner = _fullname(s, ns).rpartition(".")[0]
            return {f["name"]: value(f["type"], inner, i + n, depth + 1) for n, f in enumerate(s.get("fields", ()))}
        raise ValueError(f"cannot sample type {kind!r}")

    widest = max((len(t.get("symbols", ())) for t in names.types.values()), default=0)
    return [value(schema, "", i, 0) for i in range(max(count, 2 * widest))]


def _resolve_samples(writer: dict, reader: dict, label: str) -> list[str]:
    import io

    from fastavro import parse_schema, schemaless_reader, schemaless_writer

    try:
        w, r = parse_schema(writer), parse_schema(reader)
    except Exception as exc:  # noqa: BLE001
        return [f"{label}: schema does not parse ({exc})"]
    problems = []
    for record in sample_records(writer):
        buf = io.BytesIO()
        schemaless_writer(buf, w, record)
        buf.seek(0)
        try:
            schemaless_reader(buf, w, r)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{label}: a sample record does not resolve ({type(exc).__name__}: {exc})")
            break
    return problems


def check_full_transitive(old_schemas: list[dict], new_schema: dict) -> list[str]:
    """Why ``new_schema`` is not FULL_TRANSITIVE compatible with every schema in ``old_schemas``.

    Returns a list of human-readable problems; an empty list means compatible. Checks both directions
    (new reads old = backward, old reads new = forward) against every older version, structurally
    (Avro resolution rules) and by resolving sample records with fastavro.
    """
    problems: list[str] = []
    new_names = _Names(new_schema)
    for n, old in enumerate(old_schemas, 1):
        old_names = _Names(old)
        label = f"old schema #{n}"
        backward: list[str] = []
        _can_read(old, new_schema, old_names, new_names, "", "", "", backward, set())
        problems += [f"backward ({label} data, new reader){p or ': record'}" for p in backward]
        forward: list[str] = []
        _can_read(new_schema, old, new_names, old_names, "", "", "", forward, set())
        problems += [f"forward (new data, {label} reader){p or ': record'}" for p in forward]
        problems += _resolve_samples(old, new_schema, f"backward ({label} data, new reader)")
        problems += _resolve_samples(new_schema, old, f"forward (new data, {label} reader)")
    return problems
