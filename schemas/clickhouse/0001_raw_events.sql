-- Raw valid events, one table per event type, with every field of the Avro records.
--
-- This file is a template rendered by sinks/migrations.py: the db placeholder is the target database and
-- the lc:T placeholders become LowCardinality(T) on servers that allow it by default (>= 20.3) and plain T on
-- older ones (ClickHouse 18.16 has LowCardinality only behind an experimental flag).
--
-- Duplicates of an event (replays, producer retries) are byte-identical in every Avro field, so they share
-- the sorting key and ReplacingMergeTree folds them into one row on merge. Until a merge has happened, read
-- with FINAL or count distinct event_id / consumer_id (see README "ClickHouse tables and views").
-- occurred_at is the event time in whole seconds (UTC), occurred_ms the exact epoch milliseconds.
-- source_partition / source_offset: where the message was read from; ingested_at: wall clock of the insert.

CREATE TABLE IF NOT EXISTS `{{db}}`.purchases
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
    order_id         String,
    quantity         Int32,
    amount           Decimal(18, 2),
    currency         {{lc:String}},
    schema_version   UInt16,
    schema_id        UInt32,
    source_partition UInt16,
    source_offset    UInt64,
    ingested_at      DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (toDate(occurred_at), product_id, consumer_id, event_id);

CREATE TABLE IF NOT EXISTS `{{db}}`.usage_events
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
    session_id       String,
    action           {{lc:String}},
    feature          {{lc:Nullable(String)}},
    duration_ms      Nullable(Int64),
    co_creation      UInt8,
    app_version      {{lc:Nullable(String)}},
    schema_version   UInt16,
    schema_id        UInt32,
    source_partition UInt16,
    source_offset    UInt64,
    ingested_at      DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (toDate(occurred_at), product_id, consumer_id, event_id);

CREATE TABLE IF NOT EXISTS `{{db}}`.feedback
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
    score            Nullable(Int16),
    text             Nullable(String),
    in_reply_to      Nullable(String),
    schema_version   UInt16,
    schema_id        UInt32,
    source_partition UInt16,
    source_offset    UInt64,
    ingested_at      DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (toDate(occurred_at), product_id, consumer_id, event_id);
