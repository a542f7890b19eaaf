-- The enterprise side of co-creation from the raw tables feedback and responses: the feedback loop (response
-- rates, time to first response, detractors followed up within 48 h, the backlog of unanswered feedback) and the
-- innovation funnel (ideas reviewed, planned, shipped or declined per submission cohort, votes, "you said, we
-- did"). Definitions and example queries: docs/feedback-loop.md.
--
-- Duplicates: every raw row is deduplicated by event_id (GROUP BY event_id) before anything is counted, so every
-- figure is exact before and after merges.
-- Periods (UTC), as in the loyalty views (0006_loyalty.sql): day = toDate(occurred_at), week = ISO week from
-- Monday (toMonday), month = calendar month (toStartOfMonth), period_start the first day of the period.
-- Cohorts: a figure that relates two moments (a feedback and its response, an idea and its status changes) counts
-- in the period of the first moment (the feedback's or the idea's event time).
-- As of: what depends on "now" (backlog age, the 48 h follow-up, maturing) is evaluated as of the newest event
-- time stored in feedback or responses (as_of_ms), never the wall clock.
-- Written for ClickHouse 18.16 and current releases alike: no window functions, one JOIN per SELECT, the newest
-- event time joined onto rows (no scalar subqueries), text columns CAST to plain String so both releases give
-- the same column types.

-- Every stored feedback event once, with the two rules of the feedback loop written here only:
-- is_answerable: the kinds the company answers (not survey_invited: its own invitation, not vote).
-- is_detractor: nps or survey_response scored 0-6, rating or review scored 1-2.
CREATE VIEW IF NOT EXISTS `{{db}}`.feedback_loop_events AS
SELECT
    event_id,
    consumer_id,
    occurred_at,
    occurred_ms,
    toDate(occurred_at) AS day,
    kind,
    score,
    in_reply_to,
    product_id,
    category,
    text,
    kind IN ('survey_response', 'rating', 'nps', 'review', 'bug_report', 'idea') AS is_answerable,
    toUInt8((kind IN ('nps', 'survey_response') AND ifNull(score, 99) <= 6)
        OR (kind IN ('rating', 'review') AND ifNull(score, 99) <= 2)) AS is_detractor
FROM
(
    SELECT
        event_id,
        any(consumer_id) AS consumer_id,
        any(occurred_at) AS occurred_at,
        any(occurred_ms) AS occurred_ms,
        CAST(any(kind) AS String) AS kind,
        any(score) AS score,
        CAST(ifNull(any(in_reply_to), '') AS String) AS in_reply_to,
        any(product_id) AS product_id,
        CAST(any(category) AS String) AS category,
        any(text) AS text
    FROM `{{db}}`.feedback
    GROUP BY event_id
);

-- Every stored enterprise event once (kind: response | idea_status | case_closed; status '' unless idea_status).
CREATE VIEW IF NOT EXISTS `{{db}}`.feedback_loop_responses AS
SELECT
    event_id,
    occurred_at,
    occurred_ms,
    toDate(occurred_at) AS day,
    kind,
    in_reply_to,
    team,
    status
FROM
(
    SELECT
        event_id,
        any(occurred_at) AS occurred_at,
        any(occurred_ms) AS occurred_ms,
        CAST(any(kind) AS String) AS kind,
        any(in_reply_to) AS in_reply_to,
        CAST(any(team) AS String) AS team,
        CAST(ifNull(any(status), '') AS String) AS status
    FROM `{{db}}`.responses
    GROUP BY event_id
);

-- Every UTC day holding a feedback or enterprise event, with the day, week and month it belongs to, and as_of_ms:
-- the newest event time stored in feedback or responses (epoch ms), on every row so that other views join it.
-- No row while both tables are empty.
CREATE VIEW IF NOT EXISTS `{{db}}`.feedback_loop_period_days AS
SELECT
    day,
    period,
    multiIf(period = 'day', day, period = 'week', toMonday(day), toStartOfMonth(day)) AS period_start,
    as_of_ms
FROM
(
    SELECT arrayJoin(days) AS day, as_of_ms
    FROM
    (
        SELECT groupUniqArray(day) AS days, max(last_ms) AS as_of_ms
        FROM
        (
            SELECT toDate(occurred_at) AS day, max(occurred_ms) AS last_ms FROM `{{db}}`.feedback GROUP BY day
            UNION ALL
            SELECT toDate(occurred_at) AS day, max(occurred_ms) AS last_ms FROM `{{db}}`.responses GROUP BY day
        )
        HAVING count() > 0
    )
)
ARRAY JOIN ['day', 'week', 'month'] AS period;

-- The as-of time of every figure: the newest event time stored in feedback or responses. No row when empty.
CREATE VIEW IF NOT EXISTS `{{db}}`.feedback_loop_horizon AS
SELECT
    newest_ms AS as_of_ms,
    toDateTime(intDiv(newest_ms, 1000), 'UTC') AS as_of
FROM
(
    SELECT max(as_of_ms) AS newest_ms FROM `{{db}}`.feedback_loop_period_days HAVING count() > 0
);

-- One row per answerable feedback: its answers (responses of kind response or case_closed replying to it; idea
-- status changes are the funnel, not an answer), the first one by event time, the delay to it (0 when the
-- response is dated before the feedback: answered_before_feedback = 1), the 48 h follow-up of detractors and,
-- as of as_of_ms, its age and whether it is still unanswered (in the backlog).
CREATE VIEW IF NOT EXISTS `{{db}}`.feedback_loop_feedback AS
SELECT
    event_id,
    consumer_id,
    kind,
    score,
    product_id,
    occurred_at,
    occurred_ms,
    day,
    is_detractor,
    toUInt8(kind = 'bug_report') AS is_bug_report,
    answers,
    toUInt8(answers > 0) AS is_answered,
    first_answer_ms,
    toUInt64(if(answers > 0, greatest(toInt64(first_answer_ms) - toInt64(occurred_ms), toInt64(0)), toInt64(0)))
        AS response_delay_ms,
    toUInt8(answers > 0 AND first_answer_ms < occurred_ms) AS answered_before_feedback,
    as_of_ms,
    toUInt64(as_of_ms - occurred_ms) AS age_ms,
    toUInt8(answers = 0) AS in_backlog,
    toUInt8(occurred_ms + 172800000 <= as_of_ms) AS is_matured_48h,
    toUInt8(answers > 0 AND first_answer_ms <= occurred_ms + 172800000) AS is_followed_up_48h
FROM
(
    SELECT event_id, consumer_id, kind, score, product_id, occurred_at, occurred_ms, day, is_detractor,
           answers, first_answer_ms
    FROM
    (
        SELECT event_id, consumer_id, kind, score, product_id, occurred_at, occurred_ms, day, is_detractor
        FROM `{{db}}`.feedback_loop_events
        WHERE is_answerable
    ) AS answerable
    ANY LEFT JOIN
    (
        SELECT in_reply_to AS event_id, count() AS answers, min(occurred_ms) AS first_answer_ms
        FROM `{{db}}`.feedback_loop_responses
        WHERE kind IN ('response', 'case_closed')
        GROUP BY in_reply_to
    ) AS answered USING event_id
) AS feedback
ALL INNER JOIN
(
    SELECT day, as_of_ms FROM `{{db}}`.feedback_loop_period_days WHERE period = 'day'
) AS horizon USING day;

-- The feedback loop per period of the feedback (cohort): answerable feedback, answered, response rates (overall,
-- detractors, bug reports), time to first response (exact median and p90, seconds), detractors followed up within
-- 48 h (of those at least 48 h old as of as_of), the backlog and its age. Only periods holding answerable feedback.
CREATE VIEW IF NOT EXISTS `{{db}}`.feedback_loop AS
SELECT
    period,
    period_start,
    count() AS answerable_feedback,
    sum(is_answered) AS answered_feedback,
    answered_feedback / answerable_feedback AS response_rate,
    sum(is_detractor) AS detractor_feedback,
    sum(is_detractor * is_answered) AS detractors_answered,
    if(detractor_feedback = 0, NULL, detractors_answered / detractor_feedback) AS detractor_response_rate,
    sum(is_bug_report) AS bug_reports,
    sum(is_bug_report * is_answered) AS bug_reports_answered,
    if(bug_reports = 0, NULL, bug_reports_answered / bug_reports) AS bug_report_response_rate,
    if(answered_feedback = 0, NULL, quantileExactIf(0.5)(response_delay_ms, is_answered = 1) / 1000)
        AS median_response_seconds,
    if(answered_feedback = 0, NULL, quantileExactIf(0.9)(response_delay_ms, is_answered = 1) / 1000)
        AS p90_response_seconds,
    sum(is_detractor * is_matured_48h) AS detractors_matured_48h,
    sum(is_detractor * is_matured_48h * is_followed_up_48h) AS detractors_followed_up_48h,
    if(detractors_matured_48h = 0, NULL, detractors_followed_up_48h / detractors_matured_48h)
        AS detractor_follow_up_rate_48h,
    detractor_feedback - detractors_matured_48h AS detractors_maturing_48h,
    sum(in_backlog) AS backlog,
    if(backlog = 0, NULL, quantileExactIf(0.5)(age_ms, in_backlog = 1) / 1000) AS backlog_median_age_seconds,
    if(backlog = 0, NULL, maxIf(age_ms, in_backlog = 1) / 1000) AS backlog_oldest_age_seconds,
    sum(is_answered_before_feedback) AS answered_before_feedback,
    toDateTime(intDiv(max(as_of_ms), 1000), 'UTC') AS as_of
FROM
(
    SELECT day, is_detractor, is_bug_report, is_answered, response_delay_ms, is_matured_48h, is_followed_up_48h,
           in_backlog, age_ms, answered_before_feedback AS is_answered_before_feedback
    FROM `{{db}}`.feedback_loop_feedback
) AS feedback
ALL INNER JOIN `{{db}}`.feedback_loop_period_days USING day
GROUP BY period, period_start;

-- The whole backlog as of as_of: answerable feedback without an answer, of which detractors and bug reports, and
-- its age (oldest, median). One row once answerable feedback is stored.
CREATE VIEW IF NOT EXISTS `{{db}}`.feedback_loop_backlog AS
SELECT
    toDateTime(intDiv(max(as_of_ms), 1000), 'UTC') AS as_of,
    sum(in_backlog) AS backlog,
    sum(in_backlog * is_detractor) AS backlog_detractors,
    sum(in_backlog * is_bug_report) AS backlog_bug_reports,
    if(backlog = 0, NULL, quantileExactIf(0.5)(age_ms, in_backlog = 1) / 1000) AS median_age_seconds,
    if(backlog = 0, NULL, maxIf(age_ms, in_backlog = 1) / 1000) AS oldest_age_seconds
FROM `{{db}}`.feedback_loop_feedback
HAVING count() > 0;

-- Enterprise events that count in no figure, per period of their own event time, kind and reason:
-- 'unknown_feedback' (in_reply_to is no stored feedback: older than the stored history, or lost),
-- 'not_answerable' (a response or case_closed replying to a survey invitation or a vote),
-- 'not_an_idea' (an idea_status about a stored feedback that is not an idea).
CREATE VIEW IF NOT EXISTS `{{db}}`.feedback_loop_unmatched_responses AS
SELECT
    period,
    period_start,
    kind,
    reason,
    count() AS responses
FROM
(
    SELECT day, kind, reason
    FROM
    (
        SELECT
            day,
            kind,
            multiIf(
                stored = 0, 'unknown_feedback',
                kind = 'idea_status' AND target_kind != 'idea', 'not_an_idea',
                kind != 'idea_status' AND target_answerable = 0, 'not_answerable',
                '') AS reason
        FROM
        (
            SELECT day, kind, in_reply_to FROM `{{db}}`.feedback_loop_responses
        ) AS responses
        ANY LEFT JOIN
        (
            SELECT event_id AS in_reply_to, toUInt8(1) AS stored, kind AS target_kind,
                   is_answerable AS target_answerable
            FROM `{{db}}`.feedback_loop_events
        ) AS targets USING in_reply_to
    )
    WHERE reason != ''
) AS unmatched
ALL INNER JOIN `{{db}}`.feedback_loop_period_days USING day
GROUP BY period, period_start, kind, reason;

-- One row per stored idea (feedback kind idea): its status changes (idea_status events replying to it), the
-- furthest stage it reached on under_review (1) < planned (2) < in_progress (3) < shipped (4), its current status
-- (the latest change by event time; equal times: the later stage wins, declined after shipped; 'waiting' without
-- any change), its first shipping time and the delay to it (0 when dated before the idea), its votes (vote events
-- replying to it), distinct voters and supporters (distinct consumers who proposed or voted for it).
CREATE VIEW IF NOT EXISTS `{{db}}`.idea_funnel_ideas AS
SELECT
    idea_id,
    submitter,
    product_id,
    category,
    text,
    submitted_at,
    submitted_ms,
    day,
    status_changes,
    furthest_stage,
    if(status_changes = 0, 'waiting', latest_status) AS current_status,
    toUInt8(furthest_stage >= 4) AS is_shipped,
    if(furthest_stage >= 4, toDateTime(intDiv(first_shipped_ms, 1000), 'UTC'), toDateTime(0, 'UTC')) AS shipped_at,
    toUInt64(if(furthest_stage >= 4, greatest(toInt64(first_shipped_ms) - toInt64(submitted_ms), toInt64(0)),
        toInt64(0))) AS ship_delay_ms,
    toUInt8(status_changes > 0 AND first_change_ms < submitted_ms) AS status_before_submission,
    votes,
    voters,
    voters + toUInt64(NOT has(voter_ids, submitter)) AS supporters
FROM
(
    -- ClickHouse 18.16 finds the right side's columns of a JOIN in expressions only one SELECT further out
    SELECT idea_id, submitter, product_id, category, text, submitted_at, submitted_ms, day, status_changes,
           furthest_stage, latest_status, first_shipped_ms, first_change_ms, votes, voters, voter_ids
    FROM
    (
        SELECT idea_id, submitter, product_id, category, text, submitted_at, submitted_ms, day, status_changes,
               furthest_stage, latest_status, first_shipped_ms, first_change_ms
        FROM
        (
            SELECT event_id AS idea_id, consumer_id AS submitter, product_id, category, text,
                   occurred_at AS submitted_at, occurred_ms AS submitted_ms, day
            FROM `{{db}}`.feedback_loop_events
            WHERE kind = 'idea'
        ) AS ideas
        ANY LEFT JOIN
        (
            SELECT
                in_reply_to AS idea_id,
                count() AS status_changes,
                max(stage) AS furthest_stage,
                argMax(status, occurred_ms * 8 + stage_order) AS latest_status,
                minIf(occurred_ms, status = 'shipped') AS first_shipped_ms,
                min(occurred_ms) AS first_change_ms
            FROM
            (
                SELECT
                    in_reply_to,
                    status,
                    occurred_ms,
                    toUInt8(multiIf(status = 'under_review', 1, status = 'planned', 2, status = 'in_progress', 3,
                        status = 'shipped', 4, 0)) AS stage,
                    toUInt64(if(status = 'declined', 5, stage)) AS stage_order
                FROM `{{db}}`.feedback_loop_responses
                WHERE kind = 'idea_status'
            )
            GROUP BY idea_id
        ) AS changes USING idea_id
    ) AS ideas_with_changes
    ANY LEFT JOIN
    (
        SELECT in_reply_to AS idea_id, count() AS votes, uniqExact(consumer_id) AS voters,
               groupUniqArray(consumer_id) AS voter_ids
        FROM `{{db}}`.feedback_loop_events
        WHERE kind = 'vote'
        GROUP BY idea_id
    ) AS idea_votes USING idea_id
) AS ideas_with_votes;

-- The innovation funnel per period of submission (cohort): ideas submitted, reviewed (any status change),
-- planned / in progress / shipped (reached that stage or a later one), declined (current status), waiting (no
-- status change yet), adoption rate = shipped / submitted, time from submission to shipped (exact median and p90,
-- seconds), votes and distinct voters per idea. Only periods in which ideas were submitted.
CREATE VIEW IF NOT EXISTS `{{db}}`.idea_funnel AS
SELECT
    period,
    period_start,
    count() AS submitted,
    countIf(status_changes > 0) AS reviewed,
    countIf(furthest_stage >= 2) AS planned,
    countIf(furthest_stage >= 3) AS in_progress,
    sum(is_shipped) AS shipped,
    countIf(current_status = 'declined') AS declined,
    countIf(status_changes = 0) AS waiting,
    shipped / submitted AS adoption_rate,
    if(shipped = 0, NULL, quantileExactIf(0.5)(ship_delay_ms, is_shipped = 1) / 1000) AS median_seconds_to_ship,
    if(shipped = 0, NULL, quantileExactIf(0.9)(ship_delay_ms, is_shipped = 1) / 1000) AS p90_seconds_to_ship,
    sum(idea_votes) AS votes,
    sum(idea_voters) AS voters,
    voters / submitted AS voters_per_idea,
    sum(idea_status_before_submission) AS status_before_submission
FROM
(
    SELECT day, status_changes, furthest_stage, is_shipped, current_status, ship_delay_ms, votes AS idea_votes,
           voters AS idea_voters, status_before_submission AS idea_status_before_submission
    FROM `{{db}}`.idea_funnel_ideas
) AS submissions
ALL INNER JOIN `{{db}}`.feedback_loop_period_days USING day
GROUP BY period, period_start;

-- What the product team did: status changes of stored ideas per period of the change and status.
CREATE VIEW IF NOT EXISTS `{{db}}`.idea_status_changes AS
SELECT
    period,
    period_start,
    status,
    count() AS status_changes,
    uniqExact(in_reply_to) AS ideas
FROM
(
    SELECT day, status, in_reply_to
    FROM
    (
        SELECT day, status, in_reply_to
        FROM `{{db}}`.feedback_loop_responses
        WHERE kind = 'idea_status'
    ) AS changes
    ALL INNER JOIN
    (
        SELECT event_id AS in_reply_to FROM `{{db}}`.feedback_loop_events WHERE kind = 'idea'
    ) AS stored_ideas USING in_reply_to
) AS idea_changes
ALL INNER JOIN `{{db}}`.feedback_loop_period_days USING day
GROUP BY period, period_start, status;

-- "You said, we did": every idea that was shipped, with its submitter, when it was submitted and first shipped,
-- the time between, its current status and the distinct consumers who proposed or voted for it.
CREATE VIEW IF NOT EXISTS `{{db}}`.ideas_shipped AS
SELECT
    idea_id,
    submitter,
    product_id,
    category,
    text,
    submitted_at,
    shipped_at,
    ship_delay_ms / 1000 AS seconds_to_ship,
    current_status,
    votes,
    voters,
    supporters
FROM `{{db}}`.idea_funnel_ideas
WHERE is_shipped = 1;
