"""Confluent framing, encode/decode round trips, writer -> reader resolution and the Schema Registry path."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from helpers_events import feedback, purchase, response, usage, usage_v1

from streams import schemas
from streams.codec import HEADER_SIZE, Decoder, encode, frame, split_frame
from streams.errors import DeadLetter, RetryableError


def test_frame_is_magic_byte_and_big_endian_schema_id():
    value = encode("purchase", purchase())
    assert value[0] == 0
    assert value[1:5] == (101).to_bytes(4, "big")
    assert frame(202, b"body") == b"\x00\x00\x00\x00\xcabody"
    assert split_frame(value) == (101, HEADER_SIZE)


@pytest.mark.parametrize("value", [b"", b"\x00\x00", b"\x01\x00\x00\x00\x65abc", b'{"event_id": 1}', None])
def test_split_frame_rejects_unframed_values(value):
    with pytest.raises(DeadLetter) as err:
        split_frame(value)
    assert err.value.reason == "bad_magic_byte"
    assert "Confluent" in err.value.detail or "tombstone" in err.value.detail


def test_encode_by_type_uses_newest_version_and_by_id_that_id():
    assert split_frame(encode("usage", usage()))[0] == 202
    assert split_frame(encode(201, usage_v1()))[0] == 201
    assert split_frame(encode("feedback", feedback()))[0] == 301
    assert split_frame(encode("response", response()))[0] == 401


@pytest.mark.parametrize(
    "event_type,record",
    [("purchase", purchase()), ("usage", usage()), ("feedback", feedback(kind="idea", score=None, text="dark mode")),
     ("response", response()), ("response", response(kind="idea_status", status="shipped", team="product", text=None))],
)
def test_round_trip_decodes_logical_types(event_type, record):
    ws, decoded = Decoder().decode(encode(event_type, record), event_type)
    assert ws.event_type == event_type
    assert ws.reader is None  # newest version: plain read, no resolution
    assert decoded == record
    assert decoded["occurred_at"] == datetime(2024, 5, 1, 11, 59, tzinfo=UTC)
    if event_type == "purchase":
        assert decoded["amount"] == Decimal("259.80") and decoded["amount"].as_tuple().exponent == -2


def test_epoch_millis_and_datetime_encode_alike():
    ms = int(purchase()["occurred_at"].timestamp() * 1000)
    assert encode("purchase", purchase(occurred_at=ms)) == encode("purchase", purchase())


def test_usage_v1_is_read_with_the_v2_reader():
    ws, decoded = Decoder().decode(encode(201, usage_v1()), "usage")
    assert ws.schema_id == 201 and ws.version == 1 and ws.reader is not None
    assert decoded["app_version"] is None  # filled from the v2 default
    assert {k: decoded[k] for k in usage_v1()} == usage_v1()


def test_wrong_event_type_is_detected_from_the_writer_schema():
    with pytest.raises(DeadLetter) as err:
        Decoder().decode(encode("purchase", purchase()), "usage")
    assert err.value.reason == "wrong_event_type"


def test_unknown_schema_id_names_the_known_ids():
    value = frame(4242, encode("purchase", purchase())[HEADER_SIZE:])
    with pytest.raises(DeadLetter) as err:
        Decoder().decode(value, "purchase")
    assert err.value.reason == "unknown_schema_id"
    assert "4242" in err.value.detail and "101" in err.value.detail


def test_trailing_bytes_and_truncation_are_undecodable():
    value = encode("feedback", feedback(text="a text long enough to cut"))
    decoder = Decoder()
    for bad in (value + b"\x00", value + b"garbage", value[:-1], value[: len(value) // 2], value[:HEADER_SIZE]):
        with pytest.raises(DeadLetter) as err:
            decoder.decode(bad, "feedback")
        assert err.value.reason == "undecodable"


def _usage_v9_with_extra_action() -> dict:
    """A future writer schema whose enum has a symbol the shipped reader does not know."""
    schema = schemas.load_schema(202)
    for f in schema["fields"]:
        if f["name"] == "action":
            f["type"]["symbols"].append("teleport")
    return schema


def test_enum_symbol_unknown_to_the_reader_is_unknown_enum_not_mapped():
    writer = _usage_v9_with_extra_action()
    decoder = Decoder(schemas={209: writer, 202: schemas.load_schema(202)})
    ok = encode(209, usage(action="feature_use"), schema=writer)
    assert decoder.decode(ok, "usage")[1]["action"] == "feature_use"  # known symbols still decode
    bad = encode(209, usage(action="teleport"), schema=writer)
    with pytest.raises(DeadLetter) as err:
        decoder.decode(bad, "usage")
    assert err.value.reason == "unknown_enum"
    assert "teleport" in err.value.detail


def test_writer_without_logical_types_still_decodes():
    writer = schemas.load_schema(301)
    for f in writer["fields"]:
        if f["name"] == "occurred_at":
            f["type"] = "long"
    record = feedback(occurred_at=1_714_564_740_000)
    _, decoded = Decoder(schemas={77: writer}).decode(encode(77, record, schema=writer), "feedback")
    assert decoded["occurred_at"] == 1_714_564_740_000  # decode_event turns it into a datetime


def test_parsed_schemas_are_cached_per_id():
    decoder = Decoder()
    value = encode("purchase", purchase())
    decoder.decode(value)
    first = decoder.writer(101)
    decoder.decode(value)
    assert decoder.writer(101) is first


def test_repeated_decoding_gives_the_same_records():
    """20,000 decodes through the cached readers give what the first decode gave (the rate is printed, never
    asserted: benchmarks/decode.py measures speed; a timed assertion only measures how busy the machine is)."""
    decoder = Decoder()
    values = [encode("purchase", purchase()), encode("usage", usage()), encode(201, usage_v1()), encode("feedback", feedback())]
    first = [decoder.decode(v) for v in values]
    n = 20_000
    started = time.perf_counter()
    decoded = [decoder.decode(values[i & 3]) for i in range(n)]
    print(f"decode rate: {n / (time.perf_counter() - started):,.0f} msgs/s")
    assert all(record == first[i & 3] for i, record in enumerate(decoded))


# ---------------------------------------------------------------------------------------- registry
class _Registry(BaseHTTPRequestHandler):
    schemas: dict[int, dict] = {}
    requests: list[str] = []
    fail_with: int | None = None

    def do_GET(self):
        type(self).requests.append(self.path)
        if type(self).fail_with:
            self.send_response(type(self).fail_with)
            self.end_headers()
            return
        schema_id = int(self.path.rsplit("/", 1)[-1])
        if self.path.startswith("/schemas/ids/") and schema_id in type(self).schemas:
            body = json.dumps({"schema": json.dumps(type(self).schemas[schema_id])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.end_headers()
            self.wfile.write(body)
        else:
            body = b'{"error_code":40403,"message":"Schema not found"}'
            self.send_response(404)
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    handler = type("Handler", (_Registry,), {"schemas": {1: schemas.load_schema(101), 7: schemas.load_schema(201)}, "requests": [], "fail_with": None})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_registry_resolves_ids_once_and_caches(registry):
    handler, url = registry
    decoder = Decoder(registry_url=url)
    body = encode("purchase", purchase())[HEADER_SIZE:]
    for _ in range(5):
        ws, record = decoder.decode(frame(1, body), "purchase")
    assert record["amount"] == Decimal("259.80") and ws.event_type == "purchase"
    v1_body = encode(201, usage_v1())[HEADER_SIZE:]
    assert decoder.decode(frame(7, v1_body), "usage")[1]["app_version"] is None
    assert handler.requests == ["/schemas/ids/1", "/schemas/ids/7"]


def test_registry_404_is_unknown_schema_id_and_not_refetched_at_once(registry):
    handler, url = registry
    decoder = Decoder(registry_url=url)
    body = encode("purchase", purchase())[HEADER_SIZE:]
    for _ in range(3):
        with pytest.raises(DeadLetter) as err:
            decoder.decode(frame(101, body), "purchase")  # the registry assigns its own ids
        assert err.value.reason == "unknown_schema_id"
    assert handler.requests == ["/schemas/ids/101"]


def test_registry_down_or_failing_is_retryable_not_a_dead_letter(registry):
    handler, url = registry
    handler.fail_with = 503
    decoder = Decoder(registry_url=url, timeout=1)
    value = frame(1, encode("purchase", purchase())[HEADER_SIZE:])
    with pytest.raises(RetryableError):
        decoder.decode(value, "purchase")
    handler.fail_with = None  # recovered: the same message now decodes
    assert decoder.decode(value, "purchase")[1]["order_id"] == "o-1"
    with pytest.raises(RetryableError):
        Decoder(registry_url="http://127.0.0.1:9", timeout=0.5).decode(value, "purchase")  # nothing listens


def test_registry_credentials_in_the_url_become_basic_auth(registry):
    _, url = registry
    decoder = Decoder(registry_url=url.replace("http://", "http://user:p%40ss@"))
    assert decoder._auth_header == "Basic dXNlcjpwQHNz"
    assert decoder.decode(frame(1, encode("purchase", purchase())[HEADER_SIZE:]), "purchase")
