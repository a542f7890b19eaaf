"""Schema evolution policy FULL_TRANSITIVE.

* Golden samples (schemas/golden/*.jsonl): messages encoded once with every shipped schema version and
  committed. The current reader must decode every one of them, forever. They were written by
  :func:`write_golden_samples` -- run ``python tests/test_schema_evolution.py --write-golden`` ONLY when a
  new schema version is added (it refuses to overwrite existing files, old samples never change).
* ``check_full_transitive`` (tests/avro_compat.py) accepts the shipped versions and rejects breaking changes.
"""

from __future__ import annotations

import base64
import copy
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from avro_compat import check_full_transitive

from streams import schemas
from streams.codec import Decoder, encode
from streams.events import EVENT_TYPES
from streams.schemas import CATALOGUE, SCHEMAS_DIR, load_schema

GOLDEN_DIR = SCHEMAS_DIR / "golden"

T = 1_714_564_800_000  # 2024-05-01T12:00:00Z


def _golden_records(event_type: str, version: int) -> list[dict]:
    """Hand-written records covering every enum symbol, null and non-null optionals."""
    base = {"consumer_id": "c-golden", "channel": "web", "region": "DE", "schema_version": version}
    records = []
    if event_type == "purchase":
        for i, (amount, segment) in enumerate([("0.00", None), ("19.99", "new"), ("1234567.89", "vip"), ("5.10", "business")]):
            records.append({**base, "event_id": f"golden-p{version}-{i}", "occurred_at": T + i, "segment": segment,
                            "order_id": f"o-{i // 2}", "product_id": "AUD-001", "category": "audio",
                            "quantity": i + 1, "amount": amount, "currency": "EUR"})  # fmt: skip
    elif event_type == "usage":
        actions = ["session_start", "session_end", "feature_use", "beta_use", "customisation", "community_post"]
        for i, action in enumerate(actions):
            record = {**base, "event_id": f"golden-u{version}-{i}", "occurred_at": T + i, "segment": "loyal" if i % 2 else None,
                      "session_id": "s-1", "action": action, "feature": "search" if action == "feature_use" else None,
                      "product_id": "SOF-002", "category": "software",
                      "duration_ms": 61_000 if action == "session_end" else None,
                      "co_creation": action in ("beta_use", "customisation", "community_post")}  # fmt: skip
            if version >= 2:
                record["app_version"] = "5.4.0" if i % 2 else None
            records.append(record)
    elif event_type == "response":
        replies = [("response", None, "support"), ("case_closed", None, "support")] + [
            ("idea_status", status, "product") for status in ("under_review", "planned", "in_progress", "shipped", "declined")]
        for i, (kind, status, team) in enumerate(replies):
            records.append({**base, "event_id": f"golden-r{version}-{i}", "occurred_at": T + i,
                            "segment": None if i % 3 == 0 else "vip", "kind": kind,
                            "in_reply_to": "golden-f1-5" if kind == "idea_status" else "golden-f1-7",
                            "team": team, "status": status, "product_id": "WEA-003", "category": "wearables",
                            "text": "Thanks, fixed in 5.4.1" if kind == "response" else None})  # fmt: skip
    else:
        kinds = ["survey_invited", "survey_response", "rating", "nps", "review", "idea", "vote", "bug_report"]
        scores = [None, 8, 4, 10, None, None, None, None]
        for i, kind in enumerate(kinds):
            records.append({**base, "event_id": f"golden-f{version}-{i}", "occurred_at": T + i, "segment": "regular",
                            "kind": kind, "score": scores[i], "product_id": "WEA-003", "category": "wearables",
                            "text": "Add a dark mode" if kind == "idea" else None,
                            "in_reply_to": "golden-f1-5" if kind == "vote" else None})  # fmt: skip
    return records


def _to_avro(record: dict) -> dict:
    out = dict(record)
    if "amount" in out:
        out["amount"] = Decimal(out["amount"])
    return out


def golden_path(schema_id: int) -> Path:
    info = CATALOGUE[schema_id]
    return GOLDEN_DIR / f"{info.event_type}.v{info.version}.jsonl"


def write_golden_samples(overwrite: bool = False) -> list[Path]:
    """Write schemas/golden/<type>.v<version>.jsonl for shipped versions that have none yet.

    Each line: ``{"schema_id", "value_b64" (the framed message), "record" (as written; occurred_at epoch
    ms, amount a string)}``. Existing files are kept: golden samples are history, not regenerated.
    """
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for schema_id, info in sorted(CATALOGUE.items()):
        path = golden_path(schema_id)
        if path.exists() and not overwrite:
            continue
        lines = []
        for record in _golden_records(info.event_type, info.version):
            value = encode(schema_id, _to_avro(record))
            lines.append(json.dumps({"schema_id": schema_id, "value_b64": base64.b64encode(value).decode(), "record": record}))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(path)
    return written


def golden_samples() -> list[tuple[str, dict]]:
    samples = []
    for path in sorted(GOLDEN_DIR.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            samples.append((f"{path.name}:{n + 1}", json.loads(line)))
    return samples


# ------------------------------------------------------------------------------------------- golden
def test_every_shipped_version_has_golden_samples():
    for schema_id in CATALOGUE:
        assert golden_path(schema_id).exists(), f"no golden samples for schema {schema_id}: run write_golden_samples()"
    assert len(golden_samples()) >= 3 * len(CATALOGUE)


@pytest.mark.parametrize("name,sample", golden_samples(), ids=[n for n, _ in golden_samples()])
def test_current_reader_decodes_every_golden_sample(name, sample):
    schema_id = sample["schema_id"]
    info = CATALOGUE[schema_id]
    value = base64.b64decode(sample["value_b64"])
    _, decoded = Decoder().decode(value, info.event_type)
    written = sample["record"]
    for key, expected in written.items():
        got = decoded[key]
        if key == "occurred_at":
            assert got == datetime.fromtimestamp(expected / 1000, tz=UTC)
        elif key == "amount":
            assert got == Decimal(expected) and str(got) == expected
        else:
            assert got == expected, key
    reader = schemas.reader_schema(info.event_type)
    for field in reader["fields"]:  # fields added after the sample was written get their defaults
        if field["name"] not in written:
            assert decoded[field["name"]] == field["default"]


@pytest.mark.parametrize("name,sample", golden_samples(), ids=[n for n, _ in golden_samples()])
def test_shipped_schemas_still_encode_golden_samples_byte_for_byte(name, sample):
    """A shipped .avsc must never change: re-encoding the sample gives the committed bytes."""
    value = encode(sample["schema_id"], _to_avro(sample["record"]))
    assert base64.b64encode(value).decode() == sample["value_b64"]


# ---------------------------------------------------------------------------------------- checker
def _versions(event_type: str) -> list[dict]:
    return [load_schema(sid) for sid in schemas.schema_ids(event_type)]


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_shipped_versions_are_full_transitive(event_type):
    versions = _versions(event_type)
    for n in range(1, len(versions) + 1):
        assert check_full_transitive(versions[: n - 1], versions[n - 1]) == []


def test_usage_has_at_least_two_versions():
    assert len(schemas.schema_ids("usage")) >= 2


def _field(schema: dict, name: str) -> dict:
    return next(f for f in schema["fields"] if f["name"] == name)


def _usage_next() -> dict:
    return copy.deepcopy(_versions("usage")[-1])


def test_adding_an_optional_field_with_default_is_accepted():
    new = _usage_next()
    new["fields"].append({"name": "device", "type": ["null", "string"], "default": None})
    assert check_full_transitive(_versions("usage"), new) == []


def test_removing_a_field_that_has_a_default_is_accepted():
    new = _usage_next()
    new["fields"].remove(_field(new, "feature"))
    assert check_full_transitive(_versions("usage"), new) == []


def _rejected(new: dict, *words: str) -> list[str]:
    problems = check_full_transitive(_versions("usage"), new)
    assert problems, "breaking change was accepted"
    text = "\n".join(problems)
    for word in words:
        assert word in text
    return problems


def test_rejects_adding_a_required_field_without_default():
    new = _usage_next()
    new["fields"].append({"name": "device", "type": "string"})
    _rejected(new, "device", "no default", "backward")


def test_rejects_removing_a_field_without_default():
    new = _usage_next()
    new["fields"].remove(_field(new, "session_id"))
    _rejected(new, "session_id", "forward")


def test_rejects_removing_an_enum_symbol():
    new = _usage_next()
    _field(new, "action")["type"]["symbols"].remove("beta_use")
    _rejected(new, "beta_use", "backward")


def test_rejects_adding_an_enum_symbol_because_old_readers_would_dead_letter_it():
    new = _usage_next()
    _field(new, "action")["type"]["symbols"].append("screen_share")
    _rejected(new, "screen_share", "forward")


def test_rejects_adding_a_symbol_to_an_enum_inside_a_union():
    response = _versions("response")
    new = copy.deepcopy(response[-1])
    _field(new, "status")["type"][1]["symbols"].append("paused")
    problems = check_full_transitive(response, new)
    assert any("paused" in p and p.startswith("forward") for p in problems), problems


def test_rejects_type_changes_including_one_way_promotions():
    new = _usage_next()
    _field(new, "duration_ms")["type"] = ["null", "string"]
    _rejected(new, "duration_ms")
    promoted = _usage_next()
    _field(promoted, "schema_version")["type"] = "long"  # int -> long is backward only
    problems = _rejected(promoted, "schema_version", "forward")
    assert not any(p.startswith("backward") for p in problems)


def test_rejects_making_an_optional_field_required():
    new = _usage_next()
    f = _field(new, "feature")
    f["type"] = "string"
    del f["default"]
    _rejected(new, "feature")


def test_rejects_changing_decimal_scale_and_renaming_the_record():
    purchase = copy.deepcopy(load_schema(101))
    _field(purchase, "amount")["type"]["scale"] = 3
    assert any("amount" in p for p in check_full_transitive([load_schema(101)], purchase))
    renamed = copy.deepcopy(load_schema(101))
    renamed["name"] = "OrderLine"
    assert check_full_transitive([load_schema(101)], renamed)


def test_transitive_means_every_older_version_not_just_the_last():
    v1, v2 = _versions("usage")[:2]
    new = copy.deepcopy(v2)
    _field(new, "app_version")["type"] = "string"  # no longer optional; v1 lacks the field entirely
    _field(new, "app_version").pop("default")
    problems = check_full_transitive([v1, v2], new)
    assert any("old schema #1" in p for p in problems) and any("old schema #2" in p for p in problems)


if __name__ == "__main__":
    if "--write-golden" in sys.argv:
        for p in write_golden_samples(overwrite="--overwrite" in sys.argv):
            print(f"wrote {p}")
    else:
        print(__doc__)
