-- Raw valid enterprise events (topic copulse.responses): responses to feedback, idea status changes, closed
-- cases, with every field of the Avro record. Same conventions as 0001_raw_events.sql: a template rendered by
-- sinks/migrations.py (db and lc:T placeholders), occurred_at the event time in whole seconds (UTC),
-- occurred_ms the exact epoch milliseconds, source_partition / source_offset where the message was read from,
-- ingested_at the wall clock of the insert.
--
-- Duplicates (producer retries, replays after a crash) are byte-identical in every Avro field, so they share
-- the sorting key and ReplacingMergeTree folds them into one row on merge. Until a merge has happened, read
-- with FINAL or count distinct event_id (docs/clickhouse.md).
-- kind: response | idea_status | case_closed; in_reply_to: event_id of the feedback answered or closed, or of
-- the idea; status: the idea's new status (idea_status only, else NULL).

CREATE TABLE IF NOT EXISTS `{{db}}`.responses
(
    event_id         String,
    consumer_id      String,
    occurred_at      DateTime('UTC'),
    occurred_ms      UInt64,
    channel          {{lc:String}},
    region           {{lc:String}},
    segment          {{lc:Nullable(String)}},
    product_id       String,
    category         {{lc:String}},
    kind             {{lc:String}},
    in_reply_to      String,
    team             {{lc:String}},
    status           {{lc:Nullable(String)}},
    text             Nullable(String),
    schema_version   UInt16,
    schema_id        UInt32,
    source_partition UInt16,
    source_offset    UInt64,
    ingested_at      DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (toDate(occurred_at), product_id, consumer_id, event_id);
