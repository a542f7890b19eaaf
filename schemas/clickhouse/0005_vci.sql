-- The value co-creation index (VCI) of every final KPI window, next to the KPIs (sinks/vci.py writes it).
--
-- One row per (granularity, window, slice values, scorecard_version). scorecard_version is the content hash of
-- the scorecard (plus its human version): a changed scorecard scores every window again under a new version,
-- and the rows of older versions are never rewritten. Re-scoring a window with the same version gives the same
-- row (a newer computed_at): ReplacingMergeTree(computed_at) keeps one; read with FINAL (the views do) or
-- GROUP BY the key columns.
--
-- vci_index and perspective_scores are 0..100, kpi_attainments 0..1; NULL = insufficient data (never 0).
-- Parallel arrays, one element per perspective (perspectives, perspective_weights, perspective_scores) and
-- per scorecard KPI (kpis, kpi_perspectives, kpi_values, ...), in scorecard order. kpi_insufficient is ''
-- (scored), 'no_data' (denominator 0) or 'small_sample' (denominator below min_sample).
-- Dimension columns hold '' where the slice does not group by that dimension (as in kpi_windows).

CREATE TABLE IF NOT EXISTS `{{db}}`.vci
(
    granularity_seconds UInt32,
    window_start        DateTime('UTC'),
    window_end          DateTime('UTC'),
    slice               String,
    channel             String,
    region              String,
    category            String,
    segment             String,
    product_id          String,
    feature             String,
    scorecard_version   String,
    scorecard_name      String,
    vci_index           Nullable(Float64),
    insufficient        UInt8,
    perspectives        Array(String),
    perspective_weights Array(Float64),
    perspective_scores  Array(Nullable(Float64)),
    kpis                Array(String),
    kpi_perspectives    Array(String),
    kpi_values          Array(Nullable(Float64)),
    kpi_samples         Array(Float64),
    kpi_targets         Array(Float64),
    kpi_floors          Array(Nullable(Float64)),
    kpi_weights         Array(Float64),
    kpi_attainments     Array(Nullable(Float64)),
    kpi_insufficient    Array(String),
    active_consumers    UInt64,
    events              UInt64,
    computed_at         DateTime('UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (granularity_seconds, slice, scorecard_version, window_start, channel, region, category, segment, product_id, feature);

-- Every scorecard version that scored windows: its definition (JSON of the validated scorecard) and source file.
CREATE TABLE IF NOT EXISTS `{{db}}`.vci_scorecards
(
    scorecard_version String,
    scorecard_name    String,
    label             String,
    definition        String,
    source            String,
    registered_at     DateTime('UTC')
)
ENGINE = ReplacingMergeTree(registered_at)
ORDER BY scorecard_version;

-- Tidy companions of vci: one row per perspective / per KPI of every scored window.
CREATE VIEW IF NOT EXISTS `{{db}}`.vci_perspective_scores AS
SELECT
    granularity_seconds, window_start, window_end, slice, channel, region, category, segment, product_id, feature,
    scorecard_version,
    perspective,
    weight,
    score
FROM `{{db}}`.vci FINAL
ARRAY JOIN perspectives AS perspective, perspective_weights AS weight, perspective_scores AS score;

CREATE VIEW IF NOT EXISTS `{{db}}`.vci_kpi_attainments AS
SELECT
    granularity_seconds, window_start, window_end, slice, channel, region, category, segment, product_id, feature,
    scorecard_version,
    kpi,
    perspective,
    value,
    sample,
    target,
    floor,
    weight,
    attainment,
    insufficient_reason
FROM `{{db}}`.vci FINAL
ARRAY JOIN
    kpis AS kpi,
    kpi_perspectives AS perspective,
    kpi_values AS value,
    kpi_samples AS sample,
    kpi_targets AS target,
    kpi_floors AS floor,
    kpi_weights AS weight,
    kpi_attainments AS attainment,
    kpi_insufficient AS insufficient_reason;
