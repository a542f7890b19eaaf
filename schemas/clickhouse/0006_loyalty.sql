-- Long-term loyalty from the raw event tables: lifecycle, retention cohorts, repeat purchases, stickiness and
-- revenue per cohort, daily, weekly and monthly. Definitions and example queries: docs/loyalty.md.
--
-- Activity: a consumer is active on a UTC day when the raw tables hold a consumer-side event of theirs with
-- that event day: any purchase, any usage event, any feedback except kind 'survey_invited' (sent by the
-- company, not by the consumer). Late events count (their own event time decides the day); enterprise-side
-- events never count.
-- Duplicates: a crash replay can leave the same event twice in a raw table until a merge. Sets (active days,
-- first days) and minima are unaffected; counts and sums of purchases read the purchases deduplicated by
-- event_id (GROUP BY event_id), so every figure is exact before and after merges.
-- Periods (UTC): day = toDate(occurred_at); week = ISO week, starting Monday (toMonday); month = calendar
-- month (toStartOfMonth). period_start is the first day of the period, period_index a number that grows by
-- one from a period to the next one (toRelativeDayNum / toRelativeWeekNum / toRelativeMonthNum).
-- Range: periods run from the first to the last day with stored activity (loyalty_horizon); "ever" and
-- "before" mean since the first stored event. The newest period is usually still incomplete.
-- Money is Decimal(38, 2) in settings.currency, never a float. Rates are fractions 0..1, NULL when their
-- denominator is 0.
-- Written for ClickHouse 18.16 and current releases alike: no window functions, one JOIN per SELECT
-- (ALL INNER / ANY LEFT ... USING), arrays and lambdas instead of window frames.

-- One row per consumer and UTC day with activity: deduplicated purchase events of that day, their revenue,
-- and the newest event time of the day (epoch ms).
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_consumer_days AS
SELECT
    day,
    consumer_id,
    sum(purchase_events) AS purchase_events,
    sum(revenue) AS revenue,
    max(last_event_ms) AS last_event_ms
FROM
(
    SELECT
        toDate(occurred_at) AS day,
        consumer_id,
        count() AS purchase_events,
        sum(amount) AS revenue,
        max(occurred_ms) AS last_event_ms
    FROM
    (
        SELECT
            event_id,
            any(consumer_id) AS consumer_id,
            any(occurred_at) AS occurred_at,
            any(occurred_ms) AS occurred_ms,
            any(amount) AS amount
        FROM `{{db}}`.purchases
        GROUP BY event_id
    )
    GROUP BY day, consumer_id
    UNION ALL
    SELECT toDate(occurred_at) AS day, consumer_id, toUInt64(0), toDecimal128(0, 2), max(occurred_ms)
    FROM `{{db}}`.usage_events
    GROUP BY day, consumer_id
    UNION ALL
    SELECT toDate(occurred_at) AS day, consumer_id, toUInt64(0), toDecimal128(0, 2), max(occurred_ms)
    FROM `{{db}}`.feedback
    WHERE kind != 'survey_invited'
    GROUP BY day, consumer_id
)
GROUP BY day, consumer_id;

-- The stored range: first and last day with activity and the newest activity event time (epoch ms).
-- No row while there is no activity.
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_horizon AS
SELECT
    min(day) AS first_day,
    max(day) AS last_day,
    max(last_event_ms) AS last_event_ms
FROM `{{db}}`.loyalty_consumer_days
HAVING count() > 0;

-- Every day of the range with the day, week and month it belongs to (the one place periods are defined), and
-- the range itself (range_first_day, range_last_event_ms: loyalty_horizon's first_day and last_event_ms on every
-- row, so that other views join it instead of using scalar subqueries, which ClickHouse 18.16 mishandles in views).
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_period_days AS
SELECT
    day,
    period,
    multiIf(period = 'day', day, period = 'week', toMonday(day), toStartOfMonth(day)) AS period_start,
    multiIf(period = 'day', toRelativeDayNum(day), period = 'week', toRelativeWeekNum(day), toRelativeMonthNum(day))
        AS period_index,
    range_first_day,
    range_last_event_ms
FROM
(
    SELECT
        arrayJoin(arrayMap(offset -> first_day + offset, range(toUInt32(last_day - first_day) + 1))) AS day,
        first_day AS range_first_day,
        last_event_ms AS range_last_event_ms
    FROM `{{db}}`.loyalty_horizon
)
ARRAY JOIN ['day', 'week', 'month'] AS period;

-- Every period of the range; days = its days inside the range (fewer in the first and the newest period).
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_periods AS
SELECT
    period,
    period_start,
    period_index,
    min(day) AS first_day,
    max(day) AS last_day,
    count() AS days
FROM `{{db}}`.loyalty_period_days
GROUP BY period, period_start, period_index;

-- One row per consumer and period with activity: active days, purchase events and revenue in the period.
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_activity AS
SELECT
    period,
    period_start,
    period_index,
    consumer_id,
    count() AS active_days,
    sum(purchase_events) AS purchase_events,
    sum(revenue) AS revenue
FROM `{{db}}`.loyalty_consumer_days
ALL INNER JOIN `{{db}}`.loyalty_period_days USING day
GROUP BY period, period_start, period_index, consumer_id;

-- The lifecycle state of every consumer in every period where they have one:
-- 'new' (first active period), 'returning' (active now and in the previous period), 'resurrecting' (active
-- now, not in the previous period, but before), 'dormant' (active in the previous period, not now).
-- A consumer's active periods are sorted into an array; each is compared with the one before it, and the
-- period after each active period that is not itself active is a dormant one (inside the range only).
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_consumer_lifecycle AS
SELECT
    period,
    period_start,
    period_index,
    consumer_id,
    state
FROM
(
    -- only the two arrays to unfold leave this subquery: ARRAY JOIN copies every other column per element
    SELECT period, consumer_id, period_index, state
    FROM
    (
        SELECT
            period,
            consumer_id,
            arrayConcat(active, dormant) AS period_indexes,
            arrayConcat(
                arrayMap(
                    (index, previous, position) -> multiIf(position = 1, 'new', previous + 1 = index, 'returning', 'resurrecting'),
                    active, arrayPushFront(arrayPopBack(active), toUInt32(0)), arrayEnumerate(active)),
                arrayMap(index -> 'dormant', dormant)) AS states
        FROM
        (
            SELECT
                period,
                consumer_id,
                active,
                arrayMap(index -> toUInt32(index + 1),
                    arrayFilter((index, following) -> following != index + 1, active, arrayPushBack(arrayPopFront(active), toUInt32(0))))
                    AS dormant
            FROM
            (
                SELECT period, consumer_id, arraySort(groupArray(period_index)) AS active
                FROM `{{db}}`.loyalty_activity
                GROUP BY period, consumer_id
            )
        )
    )
    ARRAY JOIN period_indexes AS period_index, states AS state
) AS states
ALL INNER JOIN
(
    SELECT period, period_index, period_start FROM `{{db}}`.loyalty_periods
) AS periods USING (period, period_index);

-- Lifecycle counts of every period of the range (0 where nobody is in a state).
-- active = new + returning + resurrecting; active of the previous period = returning + dormant.
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_lifecycle AS
SELECT
    period,
    period_start,
    active_consumers,
    new_consumers,
    returning_consumers,
    resurrecting_consumers,
    dormant_consumers
FROM
(
    SELECT period, period_start FROM `{{db}}`.loyalty_periods
) AS periods
ANY LEFT JOIN
(
    SELECT
        period,
        period_start,
        countIf(state != 'dormant') AS active_consumers,
        countIf(state = 'new') AS new_consumers,
        countIf(state = 'returning') AS returning_consumers,
        countIf(state = 'resurrecting') AS resurrecting_consumers,
        countIf(state = 'dormant') AS dormant_consumers
    FROM `{{db}}`.loyalty_consumer_lifecycle
    GROUP BY period, period_start
) AS counts USING (period, period_start);

-- Cohort membership: every consumer belongs, per period kind, to the cohort of the period of their first
-- activity (cohort 'first_seen') and, once they purchased, of their first purchase (cohort 'first_purchase').
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_cohort_members AS
SELECT
    period,
    cohort,
    period_start AS cohort_start,
    period_index AS cohort_index,
    consumer_id
FROM
(
    SELECT consumer_id, cohort, day
    FROM
    (
        SELECT
            consumer_id,
            min(day) AS first_seen_day,
            minIf(day, purchase_events > 0) AS first_purchase_day,
            max(purchase_events) > 0 AS purchased
        FROM `{{db}}`.loyalty_consumer_days
        GROUP BY consumer_id
    )
    ARRAY JOIN
        if(purchased, ['first_seen', 'first_purchase'], ['first_seen']) AS cohort,
        if(purchased, [first_seen_day, first_purchase_day], [first_seen_day]) AS day
) AS first_days
ALL INNER JOIN `{{db}}`.loyalty_period_days USING day;

-- The cohort matrix: every cohort in every period from its own to the newest one (periods_after = 0, 1, ...)
-- with the cohort's size, its members active in that period, the retention rate, its purchasers (members
-- with a purchase event in that period) and their revenue in that period (by event time of each purchase).
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_cohorts AS
SELECT
    period,
    cohort,
    cohort_start,
    periods_after,
    period_start,
    cohort_size,
    active_consumers,
    active_consumers / cohort_size AS retention_rate,
    purchasers,
    revenue
FROM
(
    SELECT period, cohort, cohort_start, period_start, period_index - cohort_index AS periods_after, cohort_size
    FROM
    (
        SELECT period, cohort, cohort_start, cohort_index, count() AS cohort_size
        FROM `{{db}}`.loyalty_cohort_members
        GROUP BY period, cohort, cohort_start, cohort_index
    ) AS cohorts
    ALL INNER JOIN
    (
        SELECT period, period_start, period_index FROM `{{db}}`.loyalty_periods
    ) AS periods USING period
    WHERE period_index >= cohort_index
) AS cells
ANY LEFT JOIN
(
    SELECT
        period,
        cohort,
        cohort_start,
        period_start,
        count() AS active_consumers,
        countIf(purchase_events > 0) AS purchasers,
        sum(revenue) AS revenue
    FROM
    (
        SELECT period, consumer_id, period_start, period_index, purchase_events, revenue
        FROM `{{db}}`.loyalty_activity
    ) AS activity
    ALL INNER JOIN
    (
        SELECT period, consumer_id, cohort, cohort_start, cohort_index
        FROM `{{db}}`.loyalty_cohort_members
    ) AS members USING (period, consumer_id)
    WHERE period_index >= cohort_index
    GROUP BY period, cohort, cohort_start, period_start
) AS observed USING (period, cohort, cohort_start, period_start);

-- Repeat purchases per first-purchase cohort. An order is (consumer_id, order_id), placed at the event time
-- of its first line. A first purchaser repeats within N days when their second order is placed at most
-- N x 86 400 000 ms after their first one; they are matured for N days when the newest activity event time
-- (loyalty_horizon.last_event_ms) is at least N days after their first order. Rates count matured consumers
-- only (numerator and denominator), so young cohorts are not biased down.
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_repeat_purchase AS
SELECT
    period,
    cohort_start,
    count() AS first_purchasers,
    countIf(is_matured_30d) AS matured_30d,
    countIf(is_matured_30d AND has_repeat_30d) AS repeat_purchasers_30d,
    if(matured_30d = 0, NULL, repeat_purchasers_30d / matured_30d) AS repeat_rate_30d,
    countIf(is_matured_90d) AS matured_90d,
    countIf(is_matured_90d AND has_repeat_90d) AS repeat_purchasers_90d,
    if(matured_90d = 0, NULL, repeat_purchasers_90d / matured_90d) AS repeat_rate_90d
FROM
(
    SELECT
        period,
        period_start AS cohort_start,
        order_times[1] + 30 * 86400000 <= range_last_event_ms AS is_matured_30d,
        order_times[1] + 90 * 86400000 <= range_last_event_ms AS is_matured_90d,
        length(order_times) >= 2 AND order_times[2] <= order_times[1] + 30 * 86400000 AS has_repeat_30d,
        length(order_times) >= 2 AND order_times[2] <= order_times[1] + 90 * 86400000 AS has_repeat_90d
    FROM
    (
        SELECT
            consumer_id,
            toDate(min(placed_at)) AS day,
            arraySort(groupArray(placed_ms)) AS order_times
        FROM
        (
            SELECT consumer_id, order_id, min(occurred_at) AS placed_at, min(occurred_ms) AS placed_ms
            FROM `{{db}}`.purchases
            GROUP BY consumer_id, order_id
        )
        GROUP BY consumer_id
    ) AS first_purchasers
    ALL INNER JOIN `{{db}}`.loyalty_period_days USING day
)
GROUP BY period, cohort_start;

-- Stickiness per week and month: the average daily active consumers over the period's days inside the range
-- (consumer_days / days) divided by the consumers active in the period (DAU/WAU, DAU/MAU).
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_stickiness AS
SELECT
    period,
    period_start,
    days,
    consumer_days,
    active_consumers,
    consumer_days / days AS average_daily_active,
    if(active_consumers = 0, NULL, consumer_days / (days * active_consumers)) AS stickiness
FROM
(
    SELECT period, period_start, days FROM `{{db}}`.loyalty_periods WHERE period != 'day'
) AS periods
ANY LEFT JOIN
(
    SELECT period, period_start, sum(active_days) AS consumer_days, count() AS active_consumers
    FROM `{{db}}`.loyalty_activity
    WHERE period != 'day'
    GROUP BY period, period_start
) AS activity USING (period, period_start);

-- Rolling stickiness per day: DAU / MAU with MAU = consumers active in the 30 days ending that day
-- (day - 29 .. day). window_complete = 0 while those 30 days reach before the first stored day.
CREATE VIEW IF NOT EXISTS `{{db}}`.loyalty_stickiness_rolling AS
SELECT
    day,
    dau,
    mau,
    if(mau = 0, NULL, dau / mau) AS stickiness,
    window_complete
FROM
(
    SELECT day, dau, window_complete
    FROM
    (
        SELECT day, day >= range_first_day + 29 AS window_complete
        FROM `{{db}}`.loyalty_period_days
        WHERE period = 'day'
    ) AS days
    ANY LEFT JOIN
    (
        SELECT day, count() AS dau FROM `{{db}}`.loyalty_consumer_days GROUP BY day
    ) AS daily USING day
) AS daily_active
ANY LEFT JOIN
(
    -- a consumer counts in the MAU of the 30 days from each of their active days, up to (not including) their
    -- next active day: the spans of one consumer are disjoint, so the MAU of a day is the number of spans
    -- covering it
    SELECT active_day + offset AS day, count() AS mau
    FROM
    (
        SELECT active_day, span
        FROM
        (
            SELECT
                days,
                arrayMap((active, following) -> toUInt32(least(30, following - active)),
                    days, arrayPushBack(arrayPopFront(days), days[-1] + 30)) AS spans
            FROM
            (
                SELECT arraySort(groupArray(day)) AS days
                FROM `{{db}}`.loyalty_consumer_days
                GROUP BY consumer_id
            )
        )
        ARRAY JOIN days AS active_day, spans AS span
    )
    ARRAY JOIN range(span) AS offset
    GROUP BY day
) AS monthly_active USING day;
