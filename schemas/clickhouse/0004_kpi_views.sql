-- The KPI views Grafana, `copulse kpis` and downstream services read (never kpi_windows directly).
--
-- kpi_partials : the newest version of every partial (one row per key incl. source partition).
-- kpi_totals   : partials summed across source partitions (each consumer lives in exactly one partition, so
--                the sums are exact, distinct counts included); is_final = min over partitions.
-- kpi          : kpi_totals plus every ratio, next to its numerator and denominator columns.
-- kpi_final    : kpi restricted to closed windows (is_final = 1).
--
-- Ratios are NULL when their denominator is 0. Rates are fractions 0..1 (participation_rate, csat_pct,
-- survey_response_rate, returning_purchaser_rate, feature_adoption); csat_avg is on the 1..5 scale; nps is
-- -100..100; revenue and aov are Decimal(18, 2) in settings.currency, exact (aov rounded half away from zero
-- to the cent); avg_session_seconds is session_ms / (1000 * sessions_timed).
-- feature_adoption = feature_users / feature_adoption_denominator, where the denominator is the row's own
-- active_consumers, except for slices that group by feature: there it is active_consumers of the same slice
-- without the feature dimension ('feature' -> 'overall', 'channel+feature' -> 'channel') with the same other
-- dimension values and window (0 -> NULL ratio when that slice is not configured).
-- Written for ClickHouse 18.16 and current releases alike (no analyzer-only syntax, ANY LEFT JOIN ... USING).

CREATE VIEW IF NOT EXISTS `{{db}}`.kpi_partials AS
SELECT
    granularity_seconds, window_start, slice, channel, region, category, segment, product_id, feature, partition,
    argMax(window_end, version) AS window_end,
    argMax(events, version) AS events,
    argMax(active_consumers, version) AS active_consumers,
    argMax(participating_consumers, version) AS participating_consumers,
    argMax(co_creation_actions, version) AS co_creation_actions,
    argMax(ideas_submitted, version) AS ideas_submitted,
    argMax(ratings, version) AS ratings,
    argMax(rating_sum, version) AS rating_sum,
    argMax(ratings_satisfied, version) AS ratings_satisfied,
    argMax(nps_responses, version) AS nps_responses,
    argMax(nps_promoters, version) AS nps_promoters,
    argMax(nps_detractors, version) AS nps_detractors,
    argMax(surveys_invited, version) AS surveys_invited,
    argMax(survey_responses, version) AS survey_responses,
    argMax(orders, version) AS orders,
    argMax(revenue_minor, version) AS revenue_minor,
    argMax(purchasers, version) AS purchasers,
    argMax(returning_purchasers, version) AS returning_purchasers,
    argMax(sessions, version) AS sessions,
    argMax(sessions_timed, version) AS sessions_timed,
    argMax(session_ms, version) AS session_ms,
    argMax(feature_uses, version) AS feature_uses,
    argMax(feature_users, version) AS feature_users,
    argMax(is_final, version) AS is_final,
    argMax(emitted_at, version) AS emitted_at,
    max(version) AS latest_version
FROM `{{db}}`.kpi_windows
GROUP BY granularity_seconds, window_start, slice, channel, region, category, segment, product_id, feature, partition;

CREATE VIEW IF NOT EXISTS `{{db}}`.kpi_totals AS
SELECT
    granularity_seconds, window_start, window_end, slice, channel, region, category, segment, product_id, feature,
    min(is_final) AS is_final,
    count() AS partials,
    max(emitted_at) AS last_emitted_at,
    sum(events) AS events,
    sum(active_consumers) AS active_consumers,
    sum(participating_consumers) AS participating_consumers,
    sum(co_creation_actions) AS co_creation_actions,
    sum(ideas_submitted) AS ideas_submitted,
    sum(ratings) AS ratings,
    sum(rating_sum) AS rating_sum,
    sum(ratings_satisfied) AS ratings_satisfied,
    sum(nps_responses) AS nps_responses,
    sum(nps_promoters) AS nps_promoters,
    sum(nps_detractors) AS nps_detractors,
    sum(surveys_invited) AS surveys_invited,
    sum(survey_responses) AS survey_responses,
    sum(orders) AS orders,
    sum(revenue_minor) AS revenue_minor,
    sum(purchasers) AS purchasers,
    sum(returning_purchasers) AS returning_purchasers,
    sum(sessions) AS sessions,
    sum(sessions_timed) AS sessions_timed,
    sum(session_ms) AS session_ms,
    sum(feature_uses) AS feature_uses,
    sum(feature_users) AS feature_users
FROM `{{db}}`.kpi_partials
GROUP BY granularity_seconds, window_start, window_end, slice, channel, region, category, segment, product_id, feature;

CREATE VIEW IF NOT EXISTS `{{db}}`.kpi AS
SELECT
    granularity_seconds, window_start, window_end, slice, channel, region, category, segment, product_id, feature,
    is_final,
    partials,
    last_emitted_at,
    events,
    active_consumers,
    participating_consumers,
    co_creation_actions,
    ideas_submitted,
    ratings,
    rating_sum,
    ratings_satisfied,
    nps_responses,
    nps_promoters,
    nps_detractors,
    surveys_invited,
    survey_responses,
    orders,
    revenue_minor,
    purchasers,
    returning_purchasers,
    sessions,
    sessions_timed,
    session_ms,
    feature_uses,
    feature_users,
    if(active_consumers = 0, NULL, participating_consumers / active_consumers) AS participation_rate,
    if(ratings = 0, NULL, rating_sum / ratings) AS csat_avg,
    if(ratings = 0, NULL, ratings_satisfied / ratings) AS csat_pct,
    if(nps_responses = 0, NULL, 100 * (toInt64(nps_promoters) - toInt64(nps_detractors)) / nps_responses) AS nps,
    if(surveys_invited = 0, NULL, survey_responses / surveys_invited) AS survey_response_rate,
    toDecimal64(revenue_minor, 2) / 100 AS revenue,
    -- intDiv rounds half away from zero here; both branches of if() are evaluated, hence greatest(orders, 1)
    if(orders = 0, NULL, toDecimal64(intDiv(2 * revenue_minor + if(revenue_minor < 0, -1, 1) * toInt64(greatest(orders, 1)), 2 * toInt64(greatest(orders, 1))), 2) / 100) AS aov,
    if(purchasers = 0, NULL, returning_purchasers / purchasers) AS returning_purchaser_rate,
    if(sessions_timed = 0, NULL, session_ms / (1000 * sessions_timed)) AS avg_session_seconds,
    if(has(splitByChar('+', slice), 'feature'), toUInt64(ifNull(base_active_consumers, 0)), active_consumers) AS feature_adoption_denominator,
    if(feature_adoption_denominator = 0, NULL, feature_users / feature_adoption_denominator) AS feature_adoption
FROM
(
    SELECT
        *,
        if(slice = 'feature', 'overall', arrayStringConcat(arrayFilter(d -> d != 'feature', splitByChar('+', slice)), '+')) AS base_slice
    FROM `{{db}}`.kpi_totals
) AS totals
ANY LEFT JOIN
(
    SELECT
        granularity_seconds,
        window_start,
        slice AS base_slice,
        channel,
        region,
        category,
        segment,
        product_id,
        active_consumers AS base_active_consumers
    FROM `{{db}}`.kpi_totals
    WHERE feature = ''
) AS base
USING (granularity_seconds, window_start, base_slice, channel, region, category, segment, product_id);

CREATE VIEW IF NOT EXISTS `{{db}}`.kpi_final AS
SELECT *
FROM `{{db}}`.kpi
WHERE is_final = 1;
