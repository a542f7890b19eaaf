-- KPI partial rows, exactly streams/kpis.py ROW_COLUMNS (KEY_COLUMNS + COUNTERS + META_COLUMNS).
-- One row per (granularity, window, slice values, source partition) and version: the engine re-emits a key
-- with a higher version while the window is open; ReplacingMergeTree(version) keeps the highest on merge and
-- the views below take argMax(..., version), so the result is exact before merges too. Replays of the same
-- (key, version) are identical rows and collapse.
-- Dimension columns hold '' where the slice does not group by that dimension.

CREATE TABLE IF NOT EXISTS `{{db}}`.kpi_windows
(
    granularity_seconds     UInt32,
    window_start            DateTime('UTC'),
    slice                   String,
    channel                 String,
    region                  String,
    category                String,
    segment                 String,
    product_id              String,
    feature                 String,
    partition               UInt16,
    events                  UInt64,
    active_consumers        UInt64,
    participating_consumers UInt64,
    co_creation_actions     UInt64,
    ideas_submitted         UInt64,
    ratings                 UInt64,
    rating_sum              UInt64,
    ratings_satisfied       UInt64,
    nps_responses           UInt64,
    nps_promoters           UInt64,
    nps_detractors          UInt64,
    surveys_invited         UInt64,
    survey_responses        UInt64,
    orders                  UInt64,
    revenue_minor           Int64,
    purchasers              UInt64,
    returning_purchasers    UInt64,
    sessions                UInt64,
    sessions_timed          UInt64,
    session_ms              UInt64,
    feature_uses            UInt64,
    feature_users           UInt64,
    window_end              DateTime('UTC'),
    version                 UInt64,
    is_final                UInt8,
    emitted_at              DateTime('UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (granularity_seconds, window_start, slice, channel, region, category, segment, product_id, feature, partition);
