-- Dead-lettered ('dlq') and late ('late') messages: one row per source message, identified by
-- (kind, topic, partition, offset) of the message that was rejected. Replays collapse on merge; the
-- summary view de-duplicates explicitly, so it is exact before merges as well.
-- key: the Kafka message key as UTF-8 text (invalid bytes backslash-escaped), NULL if the message had none.
-- value_size: size of the message value in bytes. rejected_at: when it was rejected (UTC, seconds);
-- rejected_ms: the same in epoch milliseconds.

CREATE TABLE IF NOT EXISTS `{{db}}`.rejected
(
    kind        {{lc:String}},
    reason      String,
    topic       {{lc:String}},
    partition   UInt16,
    offset      UInt64,
    key         Nullable(String),
    value_size  UInt32,
    rejected_at DateTime('UTC'),
    rejected_ms UInt64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(rejected_at)
ORDER BY (kind, topic, partition, offset);

-- Messages per minute, kind, topic and reason, for data-quality panels.
CREATE VIEW IF NOT EXISTS `{{db}}`.dead_letter_summary AS
SELECT
    toStartOfMinute(rejected_at) AS minute,
    kind,
    topic,
    reason,
    count() AS messages,
    sum(value_size) AS value_bytes
FROM
(
    SELECT
        kind,
        topic,
        partition,
        offset,
        any(reason) AS reason,
        min(rejected_at) AS rejected_at,
        any(value_size) AS value_size
    FROM `{{db}}`.rejected
    GROUP BY kind, topic, partition, offset
)
GROUP BY minute, kind, topic, reason;
