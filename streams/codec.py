"""Confluent-framed Avro: ``encode`` for producers and the ``Decoder`` the worker uses.

Wire format of every message value::

    byte 0      magic byte, always 0
    bytes 1-4   schema id, unsigned 32-bit big-endian
    bytes 5-    Avro binary encoding of exactly one record (no container header, no trailing bytes)

The decoder looks writer schemas up by id (Schema Registry ``GET /schemas/ids/{id}`` when
``COPULSE_SCHEMA_REGISTRY_URL`` is set, else the shipped catalogue in :mod:`streams.schemas`), and reads every
body with writer -> reader schema resolution, the reader being the newest shipped version of the event
type. Parsed schemas are cached per id, so steady-state decoding never parses or fetches a schema.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from streams import schemas as catalogue
from streams.errors import (
    BAD_MAGIC_BYTE,
    UNDECODABLE,
    UNKNOWN_ENUM,
    UNKNOWN_SCHEMA_ID,
    WRONG_EVENT_TYPE,
    DeadLetter,
    RetryableError,
)

log = logging.getLogger(__name__)

MAGIC_BYTE = 0
HEADER = struct.Struct(">BI")
HEADER_SIZE = HEADER.size  # 5


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header (magic byte 0, 4-byte big-endian schema id)."""
    return HEADER.pack(MAGIC_BYTE, schema_id) + body


def split_frame(value: bytes | None) -> tuple[int, int]:
    """(schema_id, body offset) of a framed value; DeadLetter(bad_magic_byte) if it is not framed."""
    if value is None:
        raise DeadLetter(
            BAD_MAGIC_BYTE, "message has no value (tombstone); send a Confluent-framed Avro record instead"
        )
    if len(value) < HEADER_SIZE:
        raise DeadLetter(
            BAD_MAGIC_BYTE,
            f"value is {len(value)} bytes, shorter than the 5-byte Confluent header "
            "(magic byte 0 + 4-byte schema id); frame the Avro body with the Confluent wire format",
        )
    magic, schema_id = HEADER.unpack_from(value)
    if magic != MAGIC_BYTE:
        raise DeadLetter(
            BAD_MAGIC_BYTE,
            f"first byte is {magic:#04x}, expected the magic byte 0x00 of the Confluent wire format; "
            "serialize with a Confluent Avro serializer (magic byte, 4-byte schema id, Avro binary body)",
        )
    return schema_id, HEADER_SIZE


# --------------------------------------------------------------------------------------------------
# encoding (producers, generator, tests)
# --------------------------------------------------------------------------------------------------

_parse_lock = threading.Lock()
_catalogue_parsed: dict[int, dict] = {}


def parsed_catalogue_schema(schema_id: int) -> dict:
    """fastavro-parsed shipped schema (cached). KeyError for ids that are not shipped."""
    parsed = _catalogue_parsed.get(schema_id)
    if parsed is None:
        with _parse_lock:
            parsed = _catalogue_parsed.get(schema_id)
            if parsed is None:
                parsed = parse_schema(catalogue.load_schema(schema_id))
                _catalogue_parsed[schema_id] = parsed
    return parsed


def resolve_schema_id(event_type_or_schema_id: str | int) -> int:
    if isinstance(event_type_or_schema_id, str):
        return catalogue.latest_schema_id(event_type_or_schema_id)
    return int(event_type_or_schema_id)


def encode(event_type_or_schema_id: str | int, record: Mapping[str, Any], *, schema: dict | None = None) -> bytes:
    """Confluent-framed Avro bytes of ``record``.

    ``event_type_or_schema_id``: an event type such as 'purchase' (newest shipped version) or a schema id.
    ``schema``: a raw writer schema for an id that is not shipped (tests, registry-only schemas).
    ``occurred_at`` may be an aware datetime or epoch ms, ``amount`` must be a Decimal with <= 2 places.
    Optional (nullable) fields may be omitted; ``schema_version`` defaults to the version of the schema.
    """
    schema_id = resolve_schema_id(event_type_or_schema_id)
    if schema is not None:
        parsed = _parsed_extra(json.dumps(schema, sort_keys=True))
    else:
        parsed = parsed_catalogue_schema(schema_id)
    if "schema_version" not in record and schema_id in catalogue.CATALOGUE:
        record = {**record, "schema_version": catalogue.CATALOGUE[schema_id].version}
    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC_BYTE, schema_id))
    schemaless_writer(buf, parsed, record)
    return buf.getvalue()


_extra_parsed: dict[str, dict] = {}


def _parsed_extra(schema_json: str) -> dict:
    parsed = _extra_parsed.get(schema_json)
    if parsed is None:
        parsed = parse_schema(json.loads(schema_json))
        _extra_parsed[schema_json] = parsed
    return parsed


# --------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class WriterSchema:
    """Everything needed to decode bodies written with one schema id (built once per id)."""

    schema_id: int
    event_type: str | None  # None: a record that is not one of ours
    writer: dict = field(repr=False)  # fastavro-parsed writer schema
    #: fastavro-parsed reader schema; None when writer == reader (plain read, no resolution)
    reader: dict | None = field(repr=False)
    #: top-level field -> writer enum symbols the reader does not know (decoding those is unknown_enum)
    unknown_symbols: dict[str, frozenset[str]] = field(default_factory=dict)
    version: int | None = None  # shipped version, if known


def parse_with_named_types(schema: Any) -> tuple[Any, dict[str, dict]]:
    """(fastavro-parsed schema, full name -> parsed definition of every named type inside it).

    Parsed schemas spell every named type by its full name, so no namespace bookkeeping is needed.
    """
    named_types: dict[str, dict] = {}
    return parse_schema(schema, named_schemas=named_types), named_types


def _unknown_enum_symbols(
    writer: dict, writer_types: Mapping[str, dict], reader_types: Mapping[str, dict]
) -> dict[str, frozenset[str]]:
    """Top-level field -> the symbols of its writer enum that the reader's enum of that name lacks."""
    extra_by_enum = {}
    for name, definition in writer_types.items():
        if definition["type"] == "enum":
            extra = frozenset(definition["symbols"]) - frozenset(reader_types.get(name, {}).get("symbols", ()))
            if extra:
                extra_by_enum[name] = extra
    unknown_symbols = {}
    for f in writer.get("fields", ()):
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        for branch in branches:
            name = branch.get("name") if isinstance(branch, dict) else branch
            if name in extra_by_enum:
                unknown_symbols[f["name"]] = extra_by_enum[name]
    return unknown_symbols


class Decoder:
    """Decodes Confluent-framed Avro values into dicts (reader = newest shipped schema of the type).

    ``Decoder(settings)`` uses the registry at ``settings.schema_registry_url`` if set, else the shipped
    catalogue. ``schemas`` replaces the catalogue with explicit ``{schema_id: raw schema}`` (tests).
    Thread-safe for concurrent readers; a registry fetch happens at most once per schema id.
    """

    def __init__(
        self,
        settings: Any = None,
        *,
        registry_url: str | None = None,
        schemas: Mapping[int, dict] | None = None,
        timeout: float = 2.0,
        negative_ttl: float = 30.0,
    ):
        if registry_url is None and settings is not None:
            registry_url = getattr(settings, "schema_registry_url", None) or None
        self.registry_url = registry_url.rstrip("/") if registry_url else None
        self.timeout = timeout
        self.negative_ttl = negative_ttl
        self._explicit = dict(schemas) if schemas is not None else None
        self._cache: dict[int, WriterSchema] = {}
        self._unknown: dict[int, tuple[float, str]] = {}  # id -> (expiry monotonic, detail)
        self._lock = threading.Lock()
        self._readers: dict[str, dict] = {}
        self._auth_header: str | None = None
        if self.registry_url:
            parts = urllib.parse.urlsplit(self.registry_url)
            if parts.username:
                creds = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
                self._auth_header = "Basic " + base64.b64encode(creds.encode()).decode()
                netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
                self.registry_url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    # ---------------------------------------------------------------------------------- schemas
    def reader_for(self, event_type: str) -> dict:
        reader = self._readers.get(event_type)
        if reader is None:
            reader = parsed_catalogue_schema(catalogue.latest_schema_id(event_type))
            self._readers[event_type] = reader
        return reader

    def writer(self, schema_id: int) -> WriterSchema:
        """Cached writer schema of an id. DeadLetter(unknown_schema_id) or RetryableError (registry down)."""
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._cache.get(schema_id)
            if cached is not None:
                return cached
            unknown = self._unknown.get(schema_id)
            if unknown is not None and unknown[0] > time.monotonic():
                raise DeadLetter(UNKNOWN_SCHEMA_ID, unknown[1])
            try:
                raw, version = self._fetch(schema_id)
                entry = self._build(schema_id, raw, version)
            except DeadLetter as exc:
                if exc.reason == UNKNOWN_SCHEMA_ID:
                    if len(self._unknown) > 10_000:
                        self._unknown.clear()
                    self._unknown[schema_id] = (time.monotonic() + self.negative_ttl, exc.detail)
                raise
            self._cache[schema_id] = entry
            return entry

    def _fetch(self, schema_id: int) -> tuple[dict, int | None]:
        if self._explicit is not None:
            if schema_id not in self._explicit:
                raise DeadLetter(UNKNOWN_SCHEMA_ID, self._unknown_detail(schema_id))
            return self._explicit[schema_id], None
        if not self.registry_url:
            if schema_id not in catalogue.CATALOGUE:
                raise DeadLetter(UNKNOWN_SCHEMA_ID, self._unknown_detail(schema_id))
            return catalogue.load_schema(schema_id), catalogue.CATALOGUE[schema_id].version
        return self._fetch_registry(schema_id), None

    def _unknown_detail(self, schema_id: int) -> str:
        where = f"the Schema Registry at {self.registry_url}" if self.registry_url else "copulse's shipped schema catalogue"
        known = "" if self.registry_url else f" (known ids: {sorted(self._explicit or catalogue.CATALOGUE)})"
        return (
            f"schema id {schema_id} is not in {where}{known}; register the writer schema before producing "
            "and frame messages with the id the registry returned"
        )

    def _fetch_registry(self, schema_id: int) -> dict:
        url = f"{self.registry_url}/schemas/ids/{schema_id}"
        request = urllib.request.Request(url, headers={"Accept": "application/vnd.schemaregistry.v1+json, application/json"})
        if self._auth_header:
            request.add_header("Authorization", self._auth_header)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise DeadLetter(UNKNOWN_SCHEMA_ID, self._unknown_detail(schema_id)) from None
            raise RetryableError(f"Schema Registry GET {url} answered HTTP {exc.code}; will retry") from exc
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            raise RetryableError(f"Schema Registry GET {url} failed ({exc}); will retry") from exc
        schema_type = payload.get("schemaType", "AVRO") if isinstance(payload, dict) else None
        if schema_type != "AVRO":
            raise DeadLetter(
                UNKNOWN_SCHEMA_ID,
                f"schema id {schema_id} is a {schema_type} schema; copulse reads Avro only, produce with Avro",
            )
        try:
            return json.loads(payload["schema"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RetryableError(f"Schema Registry GET {url} returned an unreadable body ({exc}); will retry") from exc

    def _build(self, schema_id: int, raw: dict, version: int | None) -> WriterSchema:
        try:
            writer, writer_types = parse_with_named_types(raw)
        except Exception as exc:  # noqa: BLE001 - a schema we cannot use is the producer's problem
            raise DeadLetter(
                UNKNOWN_SCHEMA_ID, f"schema id {schema_id} is not a valid Avro schema ({exc}); fix the registered schema"
            ) from None
        event_type = catalogue.event_type_of(writer)
        reader = None
        unknown_symbols: dict[str, frozenset[str]] = {}
        if event_type is not None:
            reader = self.reader_for(event_type)
            if writer == reader:
                reader = None  # identical: plain read, no resolution
            else:
                _, reader_types = parse_with_named_types(catalogue.reader_schema(event_type))
                unknown_symbols = _unknown_enum_symbols(writer, writer_types, reader_types)
        return WriterSchema(schema_id, event_type, writer, reader, unknown_symbols, version)

    # ---------------------------------------------------------------------------------- decoding
    def decode(self, value: bytes, expected_type: str | None = None) -> tuple[WriterSchema, dict]:
        """(writer schema, record) of a framed value.

        Raises DeadLetter (bad_magic_byte, unknown_schema_id, wrong_event_type when the writer schema is
        not of ``expected_type``, unknown_enum, undecodable) or RetryableError (registry down).
        """
        schema_id, offset = split_frame(value)
        ws = self.writer(schema_id)
        if expected_type is not None and ws.event_type != expected_type:
            what = ws.event_type or f"foreign record {ws.writer.get('name')!r}"
            raise DeadLetter(
                WRONG_EVENT_TYPE,
                f"schema id {schema_id} is a {what} schema but this topic carries {expected_type} events; "
                f"produce {what} events to their own topic",
            )
        return ws, self.decode_body(ws, value, offset)

    def decode_body(self, ws: WriterSchema, value: bytes, offset: int = HEADER_SIZE) -> dict:
        fo = io.BytesIO(value)
        fo.seek(offset)
        try:
            record = schemaless_reader(fo, ws.writer, ws.reader)
        except Exception as exc:  # noqa: BLE001 - every failure of bad bytes is a dead letter
            if ws.unknown_symbols:
                self._raise_if_unknown_enum(ws, value, offset)
            raise DeadLetter(
                UNDECODABLE,
                f"Avro body does not decode with writer schema id {ws.schema_id} "
                f"({type(exc).__name__}: {str(exc)[:200]}); serialize exactly one record with the schema "
                "the id names",
            ) from None
        end = fo.tell()
        if end != len(value):
            raise DeadLetter(
                UNDECODABLE,
                f"{len(value) - end} unexpected trailing byte(s) after the Avro body of schema id "
                f"{ws.schema_id}; a message must hold exactly one record",
            )
        if not isinstance(record, dict):
            raise DeadLetter(UNDECODABLE, f"schema id {ws.schema_id} does not describe a record")
        return record

    def _raise_if_unknown_enum(self, ws: WriterSchema, value: bytes, offset: int) -> None:
        fo = io.BytesIO(value)
        fo.seek(offset)
        try:
            plain = schemaless_reader(fo, ws.writer, None)
        except Exception:  # noqa: BLE001 - the body is broken, not just an unknown symbol
            return
        if not isinstance(plain, dict):
            return
        for name, unknown in ws.unknown_symbols.items():
            v = plain.get(name)
            if isinstance(v, str) and v in unknown:
                raise DeadLetter(
                    UNKNOWN_ENUM,
                    f"field {name!r} has enum symbol {v!r} that the reader schema does not know; "
                    "new enum symbols break FULL_TRANSITIVE compatibility, send one of the reader's symbols",
                )
