"""FULL_TRANSITIVE compatibility checking of Avro schemas (used by tests/test_schema_evolution.py).

FULL_TRANSITIVE = every version can read data written by every other version, in both directions:
backward (the new schema reads data of each older one) and forward (each older schema reads data of
the new one). Structurally that means, following the Avro schema resolution rules in both directions:

* a field added or removed needs a default (the side that lacks it fills the default in);
* a field's type may not change: the Avro promotions (int -> long -> float -> double, string <-> bytes)
  only work from writer to reader, so a promotion breaks the other direction;
* enum symbols may be neither removed (new readers cannot read old data) nor added (old readers cannot
  read new data) -- copulse enums have no enum default on purpose: an unknown symbol is a dead letter;
* record / enum / fixed names, fixed sizes and logical types (decimal precision and scale) stay equal.

On top of the structural rules, sample records of each schema are actually resolved through the other
with fastavro, both ways. fastavro itself resolves data, not schemas: it has no compatibility checker.

Schemas are walked as fastavro parses them (:func:`streams.codec.parse_with_named_types`): every named
type is spelled by its full name and references resolve through the parser's named types.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from streams.codec import parse_with_named_types

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_NAMED = ("record", "error", "enum", "fixed")


@dataclass(frozen=True, slots=True)
class ParsedSchema:
    """A fastavro-parsed schema with its named types (full name -> definition)."""

    schema: Any
    named_types: dict[str, dict]

    @classmethod
    def parse(cls, raw: Any) -> ParsedSchema:
        return cls(*parse_with_named_types(raw))

    def resolve(self, s: Any) -> Any:
        """``s`` with a reference to a named type replaced by its definition."""
        if isinstance(s, str) and s not in _PRIMITIVES:
            if s not in self.named_types:
                raise ValueError(f"unknown named type {s!r}")
            return self.named_types[s]
        return s


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


def _can_read(writer: Any, reader: Any, ws: ParsedSchema, rs: ParsedSchema, path: str, out: list[str], seen: set) -> None:
    """Append to ``out`` why data written with ``writer`` cannot be read with ``reader`` (Avro resolution)."""
    writer, reader = ws.resolve(writer), rs.resolve(reader)
    wk, rk = _kind(writer), _kind(reader)
    if wk == "union":
        for branch in writer:  # every branch the writer may have written must be readable
            _can_read(branch, reader, ws, rs, path, out, seen)
        return
    if rk == "union":
        same_kind: list[str] = []  # why the branch of the writer's own kind fails: the telling reason
        for branch in reader:
            trial: list[str] = []
            _can_read(writer, branch, ws, rs, path, trial, seen)
            if not trial:
                return
            if _kind(rs.resolve(branch)) == wk and not same_kind:
                same_kind = trial
        out.extend(same_kind or [f"{path}: writer type {wk} matches no branch of the reader union"])
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
    if wk in _NAMED:
        wname, rname = writer["name"], reader["name"]
        namespace = rname.rpartition(".")[0]
        aliases = {a if "." in a or not namespace else f"{namespace}.{a}" for a in reader.get("aliases", ())}
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
        _can_read(writer["items"], reader["items"], ws, rs, f"{path}[]", out, seen)
    elif wk == "map":
        _can_read(writer["values"], reader["values"], ws, rs, f"{path}{{}}", out, seen)
    elif wk in ("record", "error"):
        wfields = {f["name"]: f for f in writer.get("fields", ())}
        for rf in reader.get("fields", ()):
            names = [rf["name"], *rf.get("aliases", ())]
            wf = next((wfields[n] for n in names if n in wfields), None)
            if wf is None:
                if "default" not in rf:
                    out.append(f"{path}.{rf['name']}: field missing in the writer and the reader has no default")
            else:
                _can_read(wf["type"], rf["type"], ws, rs, f"{path}.{rf['name']}", out, seen)


def sample_records(schema: ParsedSchema, count: int = 8) -> list[dict]:
    """Deterministic sample records of a record schema covering every enum symbol and union branch."""

    def value(s: Any, i: int, depth: int) -> Any:
        s = schema.resolve(s)
        kind = _kind(s)
        if kind == "union":
            branches = [b for b in s if depth < 4 or _kind(schema.resolve(b)) not in ("record", "array", "map")]
            return value(branches[i % len(branches)], i // len(branches) + i, depth + 1)
        logical = _logical(s)[0]
        if logical == "decimal":
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
            return [value(s["items"], i + k, depth + 1) for k in range(i % 3)] if depth < 4 else []
        if kind == "map":
            return {f"k{k}": value(s["values"], i + k, depth + 1) for k in range(i % 3)} if depth < 4 else {}
        if kind in ("record", "error"):
            return {f["name"]: value(f["type"], i + n, depth + 1) for n, f in enumerate(s.get("fields", ()))}
        raise ValueError(f"cannot sample type {kind!r}")

    widest = max((len(t.get("symbols", ())) for t in schema.named_types.values()), default=0)
    return [value(schema.schema, i, 0) for i in range(max(count, 2 * widest))]


def _resolve_samples(writer: ParsedSchema, reader: ParsedSchema, label: str) -> list[str]:
    problems = []
    for record in sample_records(writer):
        buf = io.BytesIO()
        schemaless_writer(buf, writer.schema, record)
        buf.seek(0)
        try:
            schemaless_reader(buf, writer.schema, reader.schema)
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
    try:
        new = ParsedSchema.parse(new_schema)
    except Exception as exc:  # noqa: BLE001
        return [f"new schema does not parse ({exc})"]
    problems: list[str] = []
    for n, old_schema in enumerate(old_schemas, 1):
        label = f"old schema #{n}"
        try:
            old = ParsedSchema.parse(old_schema)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{label}: schema does not parse ({exc})")
            continue
        backward: list[str] = []
        _can_read(old.schema, new.schema, old, new, "", backward, set())
        problems += [f"backward ({label} data, new reader){p or ': record'}" for p in backward]
        forward: list[str] = []
        _can_read(new.schema, old.schema, new, old, "", forward, set())
        problems += [f"forward (new data, {label} reader){p or ': record'}" for p in forward]
        problems += _resolve_samples(old, new, f"backward ({label} data, new reader)")
        problems += _resolve_samples(new, old, f"forward (new data, {label} reader)")
    return problems
