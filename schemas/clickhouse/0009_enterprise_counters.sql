-- The enterprise side in the streamed KPI windows (streams/kpis.py, the counters after feature_users):
--   answerable_feedback  feedback of the kinds the company answers (survey_response, rating, nps, review,
--                        bug_report, idea), by the feedback's event time
--   follow_up_feedback   of it what calls for a follow-up case: bug reports and detractors (nps / survey_response
--                        0-6, rating / review 1-2)
--   enterprise_events    enterprise events (copulse.responses) folded in, by their own event time
--   answers_sent         of them kind response or case_closed; cases_closed: of them case_closed
--   ideas_<status>       idea status changes to under_review, planned, in_progress, shipped, declined
-- Enterprise events count in the window of their own event time, like every event: they relate two moments (the
-- feedback's and the answer's), and a window holds the flow of both, so the ratios below are flows, not
-- cohorts (answers this hour per answerable feedback this hour can exceed 1). The cohort figures (which
-- feedback was answered, how fast) need the history and are the views of 0008_feedback_loop.sql.
-- Rows stored before this migration hold 0 in the new columns; windows open at the upgrade count from it on.
--
-- The kpi views are recreated with the new columns and three ratios (NULL when the denominator is 0):
--   answers_per_feedback         answers_sent / answerable_feedback
--   cases_closed_per_follow_up   cases_closed / follow_up_feedback
--   ideas_shipped_per_100_ideas  100 * ideas_shipped / ideas_submitted
-- Written for ClickHouse 18.16 and current releases alike. Re-running after a partial or concurrent run is
-- safe: a column that exists is reported as DUPLICATE_COLUMN (ignored by copulse db migrate), the views are
-- dropped if they exist (DROP TABLE: 18.16 has no DROP VIEW; current releases drop a view so too) and created
-- if they do not.

ALTER TABLE `{{db}}`.kpi_windows
    ADD COLUMN answerable_feedback UInt64 DEFAULT 0 AFTER feature_users,
    ADD COLUMN follow_up_feedback UInt64 DEFAULT 0 AFTER answerable_feedback,
    ADD COLUMN enterprise_events UInt64 DEFAULT 0 AFTER follow_up_feedback,
    ADD COLUMN answers_sent UInt64 DEFAULT 0 AFTER enterprise_events,
    ADD COLUMN cases_closed UInt64 DEFAULT 0 AFTER answers_sent,
    ADD COLUMN ideas_under_review UInt64 DEFAULT 0 AFTER cases_closed,
    ADD COLUMN ideas_planned UInt64 DEFAULT 0 AFTER ideas_under_review,
    ADD COLUMN ideas_in_progress UInt64 DEFAULT 0 AFTER ideas_planned,
    ADD COLUMN ideas_shipped UInt64 DEFAULT 0 AFTER ideas_in_progress,
    ADD COLUMN ideas_declined UInt64 DEFAULT 0 AFTER ideas_shipped;

DROP TABLE IF EXISTS `{{db}}`.kpi_final;
DROP TABLE IF EXISTS `{{db}}`.kpi;
DROP TABLE IF EXISTS `{{db}}`.kpi_totals;
DROP TABLE IF EXISTS `{{db}}`.kpi_partials;

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
    argMax(answerable_feedback, version) AS answerable_feedback,
    argMax(follow_up_feedback, version) AS follow_up_feedback,
    argMax(enterprise_events, version) AS enterprise_events,
    argMax(answers_sent, version) AS answers_sent,
    argMax(cases_closed, version) AS cases_closed,
    argMax(ideas_under_review, version) AS ideas_under_review,
    argMax(ideas_planned, version) AS ideas_planned,
    argMax(ideas_in_progress, version) AS ideas_in_progress,
    argMax(ideas_shipped, version) AS ideas_shipped,
    argMax(ideas_declined, version) AS ideas_declined,
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
    sum(feature_users) AS feature_users,
    sum(answerable_feedback) AS answerable_feedback,
    sum(follow_up_feedback) AS follow_up_feedback,
    sum(enterprise_events) AS enterprise_events,
    sum(answers_sent) AS answers_sent,
    sum(cases_closed) AS cases_closed,
    sum(ideas_under_review) AS ideas_under_review,
    sum(ideas_planned) AS ideas_planned,
    sum(ideas_in_progress) AS ideas_in_progress,
    sum(ideas_shipped) AS ideas_shipped,
    sum(ideas_declined) AS ideas_declined
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
    answerable_feedback,
    follow_up_feedback,
    enterprise_events,
    answers_sent,
    cases_closed,
    ideas_under_review,
    ideas_planned,
    ideas_in_progress,
    ideas_shipped,
    ideas_declined,
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
    if(answerable_feedback = 0, NULL, answers_sent / answerable_feedback) AS answers_per_feedback,
    if(follow_up_feedback = 0, NULL, cases_closed / follow_up_feedback) AS cases_closed_per_follow_up,
    if(ideas_submitted = 0, NULL, 100 * ideas_shipped / ideas_submitted) AS ideas_shipped_per_100_ideas,
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
