-- tokentrace schema: every GenAI call counts, and counts once.
--
-- 1. A call is any span with a model that is not a model load, whether or not its
--    sender named an operation. Until now a span counted as a call only when its
--    operation was set: `operation NOT IN ('', 'load_model')` is false for the '' the
--    rollups keep for "none", and `operation = 'load_model'` is NULL for a NULL
--    operation, so the spans of the deprecated GenAI dialect, hand-written spans and
--    older SDKs were stored and counted nowhere. The rule is now written once, as
--    tokentrace.counts_as_call(operation) beside tokentrace.is_load(operation), and
--    every report uses those two. The rollups always kept such spans (under operation
--    ''), so the spans already stored count as soon as this migration is applied.
--
-- 2. One model call, one count, when two call spans describe it: a call span whose
--    child (same trace, parent_span_id = its span_id) is itself a call span is a
--    *wrapper* (a second instrumentation of the same client, a framework span over the
--    client span, a proxy's span over the server's) and only the innermost call
--    counts, whatever model name the wrapper carries. Both rows stay in
--    tokentrace.spans: the wrapper's new `wrapper` column is true, and the rollups and
--    the raw reads leave its sums out (it still bounds first_start/last_start, so a
--    rollup row reads the same however its spans arrived).
--
--    A child usually ends, and arrives, before its parent, but not always: the two may
--    come in separate requests, to separate receivers, at the same moment. The spans
--    meet in tokentrace.call_links, one row per (UTC day, trace_id, span_id):
--      * every new call span upserts its own row with its start_time;
--      * every new call span whose parent is not among the statement's new spans
--        upserts its parent's row with has_child.
--    The upsert serializes the two sides on that one row (the second waits for the
--    first to commit and then sees it), so whichever comes second learns that the pair
--    is complete: a parent stored second is a wrapper from the start and is never
--    summed; a parent stored first was summed and is subtracted, once (marking its
--    row `wrapper` is the guard: a second subtraction finds it marked). Only spans a
--    statement actually inserted reach the trigger, so a retried or duplicated batch
--    changes nothing, and a rolled-back one leaves no link. Each statement takes its
--    link rows in key order, then its rollup rows in key order: concurrent writers
--    wait for each other and never deadlock.
--
--    call_links is partitioned by UTC day like tokentrace.spans and pruned with it. A
--    child looks for its parent on the child's start day; a parent is found there if
--    it started that day, or the day before and ended on or after it (a call that
--    crosses midnight is linked on both days). A wrapper longer than a day whose only
--    children start two or more days after it, or a child whose clock puts its start
--    before midnight while its parent's puts it after, is not seen as a pair.
--
-- Upgrading: the wrappers among the spans already stored are marked and the rollups
-- of their days rebuilt from the raw spans; link rows are written for the call spans
-- of the last two days, so a span arriving later still finds its stored partner.

-- --- the rule -------------------------------------------------------------------------------
CREATE FUNCTION tokentrace.counts_as_call(operation text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT operation IS DISTINCT FROM 'load_model'
$$;
COMMENT ON FUNCTION tokentrace.counts_as_call(text) IS
    'Whether a span with a model and this operation (NULL or '''' for none) is a model call: anything but load_model (tokentrace).';

CREATE FUNCTION tokentrace.is_load(operation text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT operation IS NOT DISTINCT FROM 'load_model'
$$;
COMMENT ON FUNCTION tokentrace.is_load(text) IS
    'Whether a span with a model and this operation is a model load (tokentrace).';

-- --- wrappers and links --------------------------------------------------------------------
ALTER TABLE tokentrace.spans ADD COLUMN wrapper boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN tokentrace.spans.wrapper IS
    'A call span with a call span as its child: the child counts, this one is kept but not counted (tokentrace).';

CREATE TABLE tokentrace.call_links (
    day        date        NOT NULL,
    trace_id   bytea       NOT NULL,
    span_id    bytea       NOT NULL,
    start_time timestamptz,                 -- set once this span is stored as a call
    has_child  boolean     NOT NULL,        -- a stored call span names it as its parent
    PRIMARY KEY (day, trace_id, span_id)
) PARTITION BY RANGE (day);
COMMENT ON TABLE tokentrace.call_links IS
    'Where a call span and its parent meet, whichever is stored first; partitioned by UTC day: call_links_YYYYMMDD (tokentrace).';

-- Day partitions of tokentrace.spans, and of tokentrace.call_links for those days and
-- the next (a call that crosses midnight is linked on both days). Returns how many
-- span partitions it created.
CREATE OR REPLACE FUNCTION tokentrace.ensure_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    p       record;
    created integer := 0;
BEGIN
    FOR p IN
        SELECT x.parent, x.rel, x.day
        FROM (SELECT 'spans' AS parent, 'spans_' || to_char(d, 'YYYYMMDD') AS rel, d AS day
              FROM unnest(days) d
              UNION
              SELECT 'call_links', 'call_links_' || to_char(d + k, 'YYYYMMDD'), d + k
              FROM unnest(days) d CROSS JOIN (VALUES (0), (1)) v(k)) x
        WHERE to_regclass(format('tokentrace.%I', x.rel)) IS NULL
        ORDER BY x.day, x.parent
    LOOP
        PERFORM pg_advisory_xact_lock(hashtext('tokentrace.ensure_partitions'));
        BEGIN
            IF p.parent = 'spans' THEN
                EXECUTE format(
                    'CREATE TABLE IF NOT EXISTS tokentrace.%I PARTITION OF tokentrace.spans '
                    'FOR VALUES FROM (%L) TO (%L)',
                    p.rel, (p.day::timestamp AT TIME ZONE 'UTC'),
                    ((p.day + 1)::timestamp AT TIME ZONE 'UTC'));
                created := created + 1;
            ELSE
                EXECUTE format(
                    'CREATE TABLE IF NOT EXISTS tokentrace.%I PARTITION OF tokentrace.call_links '
                    'FOR VALUES FROM (%L) TO (%L)',
                    p.rel, p.day, p.day + 1);
            END IF;
        EXCEPTION WHEN duplicate_table THEN
            NULL;
        END;
    END LOOP;
    RETURN created;
END
$$;
REVOKE EXECUTE ON FUNCTION tokentrace.ensure_partitions(date[]) FROM PUBLIC;

-- --- the trigger -----------------------------------------------------------------------------
-- As in 0080, with two steps before the sums: the link rows (one statement), then,
-- only when a pair was completed, the wrappers marked (another statement, so that it
-- sees the rows of a partner whose commit the link upsert waited for). The sums take
-- the new spans but the wrappers among them (which only bound first/last start), less
-- the wrappers stored earlier that were summed then (signed -1).
CREATE OR REPLACE FUNCTION tokentrace.rollup_new_spans() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    w_start timestamptz[];
    w_trace bytea[];
    w_span  bytea[];
    late    tokentrace.spans[];
BEGIN
    WITH calls AS MATERIALIZED (
        SELECT n.trace_id, n.span_id, n.parent_span_id, n.start_time, n.end_time
        FROM new_spans n
        WHERE n.model IS NOT NULL AND tokentrace.counts_as_call(n.operation)
    ), own AS (
        SELECT c.trace_id, c.span_id, c.start_time,
               (c.start_time AT TIME ZONE 'UTC')::date AS start_day,
               (c.end_time AT TIME ZONE 'UTC')::date AS end_day,
               EXISTS (SELECT FROM calls k
                       WHERE k.trace_id = c.trace_id AND k.parent_span_id = c.span_id) AS has_child
        FROM calls c
    ), keys AS (
        SELECT o.start_day AS day, o.trace_id, o.span_id, o.start_time, o.has_child FROM own o
        UNION ALL
        SELECT o.start_day + 1, o.trace_id, o.span_id, o.start_time, o.has_child
        FROM own o WHERE o.end_day > o.start_day
        UNION ALL
        -- A parent among the new spans was decided above, call or not.
        SELECT (c.start_time AT TIME ZONE 'UTC')::date, c.trace_id, c.parent_span_id,
               NULL::timestamptz, true
        FROM calls c
        WHERE c.parent_span_id IS NOT NULL
          AND NOT EXISTS (SELECT FROM new_spans p
                          WHERE p.trace_id = c.trace_id AND p.span_id = c.parent_span_id)
    ), linked AS (
        INSERT INTO tokentrace.call_links AS l (day, trace_id, span_id, start_time, has_child)
        SELECT k.day, k.trace_id, k.span_id, min(k.start_time), bool_or(k.has_child)
        FROM keys k
        GROUP BY k.day, k.trace_id, k.span_id
        ORDER BY k.day, k.trace_id, k.span_id
        ON CONFLICT (day, trace_id, span_id) DO UPDATE
            SET start_time = coalesce(l.start_time, excluded.start_time),
                has_child  = l.has_child OR excluded.has_child
            WHERE (l.start_time IS NULL AND excluded.start_time IS NOT NULL)
               OR (excluded.has_child AND NOT l.has_child)
        RETURNING l.start_time, l.trace_id, l.span_id, l.has_child
    )
    SELECT array_agg(x.start_time), array_agg(x.trace_id), array_agg(x.span_id)
    INTO w_start, w_trace, w_span
    FROM linked x
    WHERE x.has_child AND x.start_time IS NOT NULL;

    IF w_start IS NOT NULL THEN
        WITH marked AS (
            UPDATE tokentrace.spans sp SET wrapper = true
            FROM unnest(w_start, w_trace, w_span) AS w(start_time, trace_id, span_id)
            WHERE sp.start_time = w.start_time AND sp.trace_id = w.trace_id
              AND sp.span_id = w.span_id AND NOT sp.wrapper
            RETURNING sp
        )
        SELECT array_agg(m.sp) INTO late
        FROM marked m
        WHERE NOT EXISTS (SELECT FROM new_spans n
                          WHERE n.start_time = (m.sp).start_time AND n.trace_id = (m.sp).trace_id
                            AND n.span_id = (m.sp).span_id);
    END IF;

    INSERT INTO tokentrace.span_rollups AS r (
        grain, bucket, model, operation, spans, errors, input_tokens, output_tokens,
        timed_calls, timed_inference_ms, timed_output_tokens, decode_ms_tokens,
        decode_output_tokens, load_ms_n, load_ms_sum, first_start, last_start, mpt_packed,
        prefill_ms_tokens, prefill_input_tokens, inference_ms_total, load_ms_total)
    WITH w AS (
        SELECT * FROM unnest(w_start, w_trace, w_span) AS w(start_time, trace_id, span_id)
    ), src AS (
        SELECT 1 AS sign, n.start_time, n.model, n.operation, n.status, n.input_tokens,
               n.output_tokens, n.inference_ms, n.ms_per_token, n.decode_ms_per_token,
               n.prefill_ms_per_token, n.load_ms, n.duration_ms
        FROM new_spans n
        WHERE n.model IS NOT NULL
          AND NOT EXISTS (SELECT FROM w WHERE w.start_time = n.start_time
                            AND w.trace_id = n.trace_id AND w.span_id = n.span_id)
        UNION ALL
        -- A wrapper stored now: only its start time (first_start/last_start).
        SELECT 0, n.start_time, n.model, n.operation, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL
        FROM new_spans n
        JOIN w ON w.start_time = n.start_time AND w.trace_id = n.trace_id AND w.span_id = n.span_id
        WHERE n.model IS NOT NULL
        UNION ALL
        -- A wrapper stored earlier, summed then: subtracted.
        SELECT -1, l.start_time, l.model, l.operation, l.status, l.input_tokens,
               l.output_tokens, l.inference_ms, l.ms_per_token, l.decode_ms_per_token,
               l.prefill_ms_per_token, l.load_ms, l.duration_ms
        FROM unnest(late) l
    ), sb AS (
        SELECT tokentrace.bucket_floor(s.start_time, '00:05:00') AS bucket,
               s.model COLLATE "C" AS model, coalesce(s.operation, '') COLLATE "C" AS operation,
               tokentrace.mpt_bin(s.ms_per_token) AS bin,
               sum(s.sign) AS spans,
               sum(s.sign) FILTER (WHERE s.status = 'ERROR') AS errors,
               sum(s.sign * s.input_tokens) AS input_tokens,
               sum(s.sign * s.output_tokens) AS output_tokens,
               sum(s.sign * s.inference_ms) FILTER (WHERE s.ms_per_token IS NOT NULL) AS timed_inference_ms,
               sum(s.sign * s.output_tokens) FILTER (WHERE s.ms_per_token IS NOT NULL) AS timed_output_tokens,
               sum(s.sign * s.decode_ms_per_token * s.output_tokens)
                   FILTER (WHERE s.decode_ms_per_token IS NOT NULL) AS decode_ms_tokens,
               sum(s.sign * s.output_tokens)
                   FILTER (WHERE s.decode_ms_per_token IS NOT NULL) AS decode_output_tokens,
               sum(s.sign) FILTER (WHERE tokentrace.is_load(s.operation)
                                     AND coalesce(s.load_ms, s.duration_ms) IS NOT NULL) AS load_ms_n,
               sum(s.sign * coalesce(s.load_ms, s.duration_ms))
                   FILTER (WHERE tokentrace.is_load(s.operation)) AS load_ms_sum,
               min(s.start_time) AS first_start,
               max(s.start_time) AS last_start,
               sum(s.sign * s.prefill_ms_per_token * s.input_tokens)
                   FILTER (WHERE s.prefill_ms_per_token IS NOT NULL) AS prefill_ms_tokens,
               sum(s.sign * s.input_tokens)
                   FILTER (WHERE s.prefill_ms_per_token IS NOT NULL) AS prefill_input_tokens,
               sum(s.sign * s.inference_ms) AS inference_ms_total,
               sum(s.sign * s.load_ms) AS load_ms_total
        FROM src s
        GROUP BY 1, 2, 3, 4
    ), f AS (
        SELECT sb.bucket, sb.model, sb.operation,
               sum(sb.spans) AS spans, coalesce(sum(sb.errors), 0) AS errors,
               coalesce(sum(sb.input_tokens), 0) AS input_tokens,
               coalesce(sum(sb.output_tokens), 0) AS output_tokens,
               coalesce(sum(sb.spans) FILTER (WHERE sb.bin IS NOT NULL), 0) AS timed_calls,
               sum(sb.timed_inference_ms) AS timed_inference_ms,
               coalesce(sum(sb.timed_output_tokens), 0) AS timed_output_tokens,
               sum(sb.decode_ms_tokens) AS decode_ms_tokens,
               coalesce(sum(sb.decode_output_tokens), 0) AS decode_output_tokens,
               coalesce(sum(sb.load_ms_n), 0) AS load_ms_n, sum(sb.load_ms_sum) AS load_ms_sum,
               min(sb.first_start) AS first_start, max(sb.last_start) AS last_start,
               sum(sb.prefill_ms_tokens) AS prefill_ms_tokens,
               coalesce(sum(sb.prefill_input_tokens), 0) AS prefill_input_tokens,
               coalesce(sum(sb.inference_ms_total), 0) AS inference_ms_total,
               coalesce(sum(sb.load_ms_total), 0) AS load_ms_total,
               coalesce(sum(sb.spans * tokentrace.mpt_unit(sb.bin)) FILTER (WHERE sb.bin IS NOT NULL), 0)
                   AS packed
        FROM sb
        GROUP BY 1, 2, 3
    ), g(grain) AS (
        VALUES (interval '00:05:00'), (interval '01:00:00'), (interval '24:00:00')
    ), t AS (
        SELECT g.grain, tokentrace.bucket_floor(f.bucket, g.grain) AS bucket, f.model, f.operation,
               sum(f.spans)::bigint AS spans, sum(f.errors)::bigint AS errors,
               sum(f.input_tokens)::bigint AS input_tokens, sum(f.output_tokens)::bigint AS output_tokens,
               sum(f.timed_calls)::bigint AS timed_calls, sum(f.timed_inference_ms) AS timed_inference_ms,
               sum(f.timed_output_tokens)::bigint AS timed_output_tokens,
               sum(f.decode_ms_tokens) AS decode_ms_tokens,
               sum(f.decode_output_tokens)::bigint AS decode_output_tokens,
               sum(f.load_ms_n)::bigint AS load_ms_n, sum(f.load_ms_sum) AS load_ms_sum,
               min(f.first_start) AS first_start, max(f.last_start) AS last_start,
               sum(f.prefill_ms_tokens) AS prefill_ms_tokens,
               sum(f.prefill_input_tokens)::bigint AS prefill_input_tokens,
               sum(f.inference_ms_total) AS inference_ms_total, sum(f.load_ms_total) AS load_ms_total,
               sum(f.packed) AS packed
        FROM f CROSS JOIN g
        GROUP BY 1, 2, 3, 4
    )
    SELECT t.grain, t.bucket, t.model, t.operation, t.spans, t.errors, t.input_tokens,
           t.output_tokens, t.timed_calls, t.timed_inference_ms, t.timed_output_tokens,
           t.decode_ms_tokens, t.decode_output_tokens, t.load_ms_n, t.load_ms_sum,
           t.first_start, t.last_start, t.packed,
           t.prefill_ms_tokens, t.prefill_input_tokens, t.inference_ms_total, t.load_ms_total
    FROM t
    ORDER BY t.grain, t.bucket, t.model, t.operation
    ON CONFLICT (grain, bucket, model, operation) DO UPDATE SET
        spans                = r.spans + excluded.spans,
        errors               = r.errors + excluded.errors,
        input_tokens         = r.input_tokens + excluded.input_tokens,
        output_tokens        = r.output_tokens + excluded.output_tokens,
        timed_calls          = r.timed_calls + excluded.timed_calls,
        -- NULL means "no value summed yet": coalesce(a + b, a, b) keeps that meaning.
        timed_inference_ms   = coalesce(r.timed_inference_ms + excluded.timed_inference_ms,
                                        r.timed_inference_ms, excluded.timed_inference_ms),
        timed_output_tokens  = r.timed_output_tokens + excluded.timed_output_tokens,
        decode_ms_tokens     = coalesce(r.decode_ms_tokens + excluded.decode_ms_tokens,
                                        r.decode_ms_tokens, excluded.decode_ms_tokens),
        decode_output_tokens = r.decode_output_tokens + excluded.decode_output_tokens,
        load_ms_n            = r.load_ms_n + excluded.load_ms_n,
        load_ms_sum          = coalesce(r.load_ms_sum + excluded.load_ms_sum,
                                        r.load_ms_sum, excluded.load_ms_sum),
        first_start          = least(r.first_start, excluded.first_start),
        last_start           = greatest(r.last_start, excluded.last_start),
        mpt_packed           = r.mpt_packed + excluded.mpt_packed,
        prefill_ms_tokens    = coalesce(r.prefill_ms_tokens + excluded.prefill_ms_tokens,
                                        r.prefill_ms_tokens, excluded.prefill_ms_tokens),
        prefill_input_tokens = r.prefill_input_tokens + excluded.prefill_input_tokens,
        -- NULL here means "not known" (rolled up before 0080, raw spans since pruned),
        -- and stays so: adding to an unknown sum gives an unknown sum.
        inference_ms_total    = r.inference_ms_total + excluded.inference_ms_total,
        load_ms_total         = r.load_ms_total + excluded.load_ms_total;
    RETURN NULL;
END
$$;

-- --- raw reads: wrappers left out -----------------------------------------------------------
-- As in 0050; a wrapper's values read as NULL, so it bounds first/last start and
-- nothing else, exactly as the trigger rolls it up.
CREATE OR REPLACE FUNCTION tokentrace.span_summary(
    range_start  timestamptz,
    range_end    timestamptz,
    grain        interval,
    model_filter text,
    histograms   boolean)
RETURNS TABLE (
    bucket timestamptz, model text, operation text, spans bigint, errors bigint,
    input_tokens bigint, output_tokens bigint, timed_calls bigint,
    timed_inference_ms double precision, timed_output_tokens bigint,
    decode_ms_tokens double precision, decode_output_tokens bigint, load_ms_n bigint,
    load_ms_sum double precision, first_start timestamptz, last_start timestamptz,
    mpt_bins smallint[], mpt_counts bigint[])
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    -- Bounds, grain and model arrive as parameters of EXECUTE … USING, which plans
    -- with their values: partitions outside [range_start, range_end) are not planned.
    spans_q text := $q$
        SELECT CASE WHEN $3::interval IS NULL THEN $1::timestamptz
                    ELSE tokentrace.bucket_floor(sp.start_time, $3::interval) END AS bucket,
               sp.model, coalesce(sp.operation, '') AS operation, sp.start_time, sp.wrapper,
               CASE WHEN NOT sp.wrapper THEN sp.status END AS status,
               CASE WHEN NOT sp.wrapper THEN sp.input_tokens END AS input_tokens,
               CASE WHEN NOT sp.wrapper THEN sp.output_tokens END AS output_tokens,
               CASE WHEN NOT sp.wrapper THEN sp.inference_ms END AS inference_ms,
               CASE WHEN NOT sp.wrapper THEN sp.ms_per_token END AS ms_per_token,
               CASE WHEN NOT sp.wrapper THEN sp.decode_ms_per_token END AS decode_ms_per_token,
               CASE WHEN NOT sp.wrapper THEN sp.load_ms END AS load_ms,
               CASE WHEN NOT sp.wrapper THEN sp.duration_ms END AS duration_ms
        FROM %s sp
        WHERE sp.start_time >= $1::timestamptz AND sp.start_time < $2::timestamptz
          AND sp.model IS NOT NULL
          AND ($4::text IS NULL OR sp.model = $4::text)
    $q$;
    sums_q constant text := $q$
        SELECT s.bucket, s.model, s.operation,
               count(*) FILTER (WHERE NOT s.wrapper) AS spans,
               count(*) FILTER (WHERE s.status = 'ERROR') AS errors,
               coalesce(sum(s.input_tokens), 0)::bigint AS input_tokens,
               coalesce(sum(s.output_tokens), 0)::bigint AS output_tokens,
               count(*) FILTER (WHERE s.ms_per_token IS NOT NULL) AS timed_calls,
               sum(s.inference_ms) FILTER (WHERE s.ms_per_token IS NOT NULL) AS timed_inference_ms,
               coalesce(sum(s.output_tokens) FILTER (WHERE s.ms_per_token IS NOT NULL), 0)::bigint
                   AS timed_output_tokens,
               sum(s.decode_ms_per_token * s.output_tokens)
                   FILTER (WHERE s.decode_ms_per_token IS NOT NULL) AS decode_ms_tokens,
               coalesce(sum(s.output_tokens) FILTER (WHERE s.decode_ms_per_token IS NOT NULL), 0)::bigint
                   AS decode_output_tokens,
               count(coalesce(s.load_ms, s.duration_ms))
                   FILTER (WHERE tokentrace.is_load(s.operation)) AS load_ms_n,
               sum(coalesce(s.load_ms, s.duration_ms))
                   FILTER (WHERE tokentrace.is_load(s.operation)) AS load_ms_sum,
               min(s.start_time) AS first_start,
               max(s.start_time) AS last_start
        FROM s
        GROUP BY 1, 2, 3
    $q$;
    source regclass := 'tokentrace.spans'::regclass;
    day    date;
BEGIN
    -- A range within one UTC day (every raw edge of a window: at most 5 minutes) is
    -- read from that day's partition: planning it is a fraction of planning the
    -- partitioned table, which opens every day partition. No partition: no spans.
    IF isfinite(range_start) AND isfinite(range_end) AND range_start < range_end
       AND tokentrace.bucket_floor(range_start, '24:00:00')
           = tokentrace.bucket_floor(range_end - interval '1 microsecond', '24:00:00') THEN
        -- The lock a query of tokentrace.spans would take: a report still waits for a
        -- prune detaching or dropping partitions, as it did reading the parent.
        -- (ONLY: no partition is planned or read; the statement just takes the lock.)
        PERFORM FROM ONLY tokentrace.spans LIMIT 0;
        day := (range_start AT TIME ZONE 'UTC')::date;
        source := to_regclass(format('tokentrace.%I', 'spans_' || to_char(day, 'YYYYMMDD')));
        IF source IS NULL THEN
            RETURN;
        END IF;
    END IF;
    spans_q := format(spans_q, source);
    IF NOT histograms THEN
        RETURN QUERY EXECUTE
            'WITH s AS (' || spans_q || '), t AS (' || sums_q || ')
             SELECT t.*, NULL::smallint[], NULL::bigint[] FROM t'
            USING range_start, range_end, grain, model_filter;
        RETURN;
    END IF;
    RETURN QUERY EXECUTE
        'WITH s AS (' || spans_q || '), t AS (' || sums_q || $q$),
         h AS (
             SELECT b.bucket, b.model, b.operation,
                    array_agg(b.bin ORDER BY b.bin) AS bins, array_agg(b.n ORDER BY b.bin) AS counts
             FROM (SELECT s.bucket, s.model, s.operation, tokentrace.mpt_bin(s.ms_per_token) AS bin,
                          count(*) AS n
                   FROM s WHERE s.ms_per_token IS NOT NULL
                   GROUP BY 1, 2, 3, 4) b
             GROUP BY 1, 2, 3
         )
         SELECT t.*, coalesce(h.bins, '{}'), coalesce(h.counts, '{}')
         FROM t LEFT JOIN h ON h.bucket = t.bucket AND h.model = t.model AND h.operation = t.operation
        $q$
        USING range_start, range_end, grain, model_filter;
END
$fn$;

-- As in 0060, without the wrappers.
CREATE OR REPLACE FUNCTION tokentrace.span_values(
    range_start  timestamptz,
    range_end    timestamptz,
    model_filter text DEFAULT NULL)
RETURNS TABLE (
    model text, operation text, status text, input_tokens bigint, output_tokens bigint,
    inference_ms double precision, ms_per_token double precision,
    decode_ms_per_token double precision, load_ms double precision, duration_ms double precision)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    source regclass := 'tokentrace.spans'::regclass;
BEGIN
    IF isfinite(range_start) AND isfinite(range_end) AND range_start < range_end
       AND tokentrace.bucket_floor(range_start, '24:00:00')
           = tokentrace.bucket_floor(range_end - interval '1 microsecond', '24:00:00') THEN
        PERFORM FROM ONLY tokentrace.spans LIMIT 0;
        source := to_regclass(format('tokentrace.%I',
                      'spans_' || to_char((range_start AT TIME ZONE 'UTC')::date, 'YYYYMMDD')));
        IF source IS NULL THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY EXECUTE format($q$
        SELECT sp.model, coalesce(sp.operation, ''), sp.status, sp.input_tokens, sp.output_tokens,
               sp.inference_ms, sp.ms_per_token, sp.decode_ms_per_token, sp.load_ms, sp.duration_ms
        FROM %s sp
        WHERE sp.start_time >= $1 AND sp.start_time < $2 AND sp.model IS NOT NULL
          AND NOT sp.wrapper
          AND ($3::text IS NULL OR sp.model = $3::text)
    $q$, source) USING range_start, range_end, model_filter;
END
$fn$;

-- As in 0080, with the wrappers' values left out (a row of wrappers only gets zero sums,
-- "known", as the trigger gives it).
CREATE OR REPLACE FUNCTION tokentrace.fill_rollup_totals(range_start timestamptz, range_end timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    updated bigint;
BEGIN
    WITH f AS (
        SELECT tokentrace.bucket_floor(sp.start_time, '00:05:00') AS bucket,
               sp.model COLLATE "C" AS model, coalesce(sp.operation, '') COLLATE "C" AS operation,
               sum(sp.prefill_ms_per_token * sp.input_tokens)
                   FILTER (WHERE sp.prefill_ms_per_token IS NOT NULL AND NOT sp.wrapper)
                   AS prefill_ms_tokens,
               coalesce(sum(sp.input_tokens)
                   FILTER (WHERE sp.prefill_ms_per_token IS NOT NULL AND NOT sp.wrapper), 0)
                   AS prefill_input_tokens,
               coalesce(sum(sp.inference_ms) FILTER (WHERE NOT sp.wrapper), 0) AS inference_ms_total,
               coalesce(sum(sp.load_ms) FILTER (WHERE NOT sp.wrapper), 0) AS load_ms_total
        FROM tokentrace.spans sp
        WHERE sp.start_time >= range_start AND sp.start_time < range_end AND sp.model IS NOT NULL
        GROUP BY 1, 2, 3
    ), t AS (
        SELECT g.grain, tokentrace.bucket_floor(f.bucket, g.grain) AS bucket, f.model, f.operation,
               sum(f.prefill_ms_tokens) AS prefill_ms_tokens,
               sum(f.prefill_input_tokens)::bigint AS prefill_input_tokens,
               sum(f.inference_ms_total) AS inference_ms_total,
               sum(f.load_ms_total) AS load_ms_total
        FROM f CROSS JOIN (VALUES (interval '00:05:00'), (interval '01:00:00'), (interval '24:00:00')) g(grain)
        GROUP BY 1, 2, 3, 4
    )
    UPDATE tokentrace.span_rollups r
    SET prefill_ms_tokens = t.prefill_ms_tokens, prefill_input_tokens = t.prefill_input_tokens,
        inference_ms_total = t.inference_ms_total, load_ms_total = t.load_ms_total
    FROM t
    WHERE r.grain = t.grain AND r.bucket = t.bucket AND r.model = t.model AND r.operation = t.operation;
    GET DIAGNOSTICS updated = ROW_COUNT;
    RETURN updated;
END
$$;

-- --- the reports: the rule, and rows left with no call ---------------------------------------
-- A rollup row may now hold no call (only wrappers, or a wrapper subtracted): it is
-- not a model's row in any report.
CREATE OR REPLACE VIEW tokentrace.stats_60d AS
SELECT coalesce(sum(w.spans), 0)::bigint                                   AS total_measurements,
       count(DISTINCT w.model) FILTER (WHERE w.spans <> 0)                 AS unique_models,
       min(w.first_start)                                                  AS oldest_record,
       max(w.last_start)                                                   AS newest_record,
       coalesce(sum(w.input_tokens + w.output_tokens), 0)::bigint          AS total_tokens,
       tokentrace.retention_days()                                         AS retention_window_days
FROM tokentrace.window_parts(now() - interval '60 days', 'infinity', NULL, false) w;

CREATE OR REPLACE VIEW tokentrace.model_trends_60d AS
SELECT w.model,
       sum(w.timed_inference_ms) / nullif(sum(w.timed_output_tokens), 0)::float8 AS avg_efficiency,
       coalesce(sum(w.spans), 0)::bigint                                   AS measurement_count,
       coalesce(sum(w.input_tokens + w.output_tokens), 0)::bigint          AS total_tokens_processed
FROM tokentrace.window_parts(now() - interval '60 days', 'infinity', NULL, false) w
WHERE tokentrace.counts_as_call(w.operation)
GROUP BY w.model
HAVING sum(w.spans) <> 0
ORDER BY avg_efficiency NULLS LAST, w.model;

CREATE OR REPLACE FUNCTION tokentrace.efficiency_change(
    recent   interval DEFAULT '24 hours',
    baseline interval DEFAULT '60 days')
RETURNS TABLE (
    model text, recent_ms_per_token double precision, baseline_ms_per_token double precision,
    change_ratio double precision, recent_calls bigint, baseline_calls bigint)
LANGUAGE sql STABLE AS $$
    WITH r AS (
        SELECT w.model,
               sum(w.timed_inference_ms) / nullif(sum(w.timed_output_tokens), 0)::float8 AS mpt,
               coalesce(sum(w.spans), 0)::bigint AS calls
        FROM tokentrace.window_parts(now() - recent, 'infinity', NULL, false) w
        WHERE tokentrace.counts_as_call(w.operation)
        GROUP BY w.model
        HAVING sum(w.spans) <> 0
    ), b AS (
        SELECT w.model,
               sum(w.timed_inference_ms) / nullif(sum(w.timed_output_tokens), 0)::float8 AS mpt,
               coalesce(sum(w.spans), 0)::bigint AS calls
        FROM tokentrace.window_parts(now() - baseline, now() - recent, NULL, false) w
        WHERE tokentrace.counts_as_call(w.operation)
        GROUP BY w.model
        HAVING sum(w.spans) <> 0
    )
    SELECT coalesce(r.model, b.model), r.mpt, b.mpt, r.mpt / nullif(b.mpt, 0),
           coalesce(r.calls, 0), coalesce(b.calls, 0)
    FROM r FULL JOIN b ON b.model = r.model
    ORDER BY 4 DESC NULLS LAST, 1
$$;

-- As in 0070, with the rule.
CREATE OR REPLACE FUNCTION tokentrace.efficiency_range(
    range_start  timestamptz,
    range_end    timestamptz DEFAULT 'infinity',
    model_filter text        DEFAULT NULL)
RETURNS TABLE (
    model                 text,
    calls                 bigint,
    input_tokens          bigint,
    output_tokens         bigint,
    weighted_ms_per_token double precision,
    p50_ms_per_token      double precision,
    p95_ms_per_token      double precision,
    decode_ms_per_token   double precision,
    loads                 bigint,
    avg_load_ms           double precision,
    errors                bigint)
LANGUAGE plpgsql STABLE
-- See the header: one cached plan, never re-planned per call.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH plan AS MATERIALIZED (
        SELECT * FROM tokentrace.window_plan(range_start, range_end, true)
    ), raw AS MATERIALIZED (
        SELECT pl.weight AS w, v.*
        FROM plan pl CROSS JOIN LATERAL tokentrace.span_values(pl.piece_start, pl.piece_end, model_filter) v
        WHERE pl.source = 'raw'
    ), roll AS MATERIALIZED (
        -- OFFSET 0: the piece's rows by an index scan of its grain's partition, per
        -- piece, never a join the planner might turn into a scan of every rollup.
        SELECT pl.weight AS w, r.*
        FROM plan pl CROSS JOIN LATERAL (
            SELECT r.model, r.operation, r.spans, r.errors, r.timed_calls, r.input_tokens, r.output_tokens,
                   r.timed_inference_ms, r.timed_output_tokens, r.decode_ms_tokens,
                   r.decode_output_tokens, r.load_ms_n, r.load_ms_sum, r.mpt_packed
            FROM tokentrace.span_rollups r
            WHERE r.grain = pl.grain AND r.bucket >= pl.piece_start AND r.bucket < pl.piece_end
              AND (model_filter IS NULL OR r.model = model_filter)
            OFFSET 0) r
        WHERE pl.source = 'rollup'
    ), s AS (
        SELECT ro.w, ro.model, tokentrace.counts_as_call(ro.operation) AS is_call,
               tokentrace.is_load(ro.operation) AS is_load, ro.spans, ro.errors, ro.input_tokens,
               ro.output_tokens, ro.timed_inference_ms, ro.timed_output_tokens, ro.decode_ms_tokens,
               ro.decode_output_tokens, ro.load_ms_n, ro.load_ms_sum, ro.mpt_packed, ro.timed_calls
        FROM roll ro
        UNION ALL
        SELECT rw.w, rw.model, tokentrace.counts_as_call(rw.operation), tokentrace.is_load(rw.operation),
               1, (rw.status = 'ERROR')::integer,
               coalesce(rw.input_tokens, 0), coalesce(rw.output_tokens, 0),
               CASE WHEN rw.ms_per_token IS NOT NULL THEN rw.inference_ms END,
               CASE WHEN rw.ms_per_token IS NOT NULL THEN coalesce(rw.output_tokens, 0) ELSE 0 END,
               CASE WHEN rw.decode_ms_per_token IS NOT NULL THEN rw.decode_ms_per_token * rw.output_tokens END,
               CASE WHEN rw.decode_ms_per_token IS NOT NULL THEN coalesce(rw.output_tokens, 0) ELSE 0 END,
               CASE WHEN tokentrace.is_load(rw.operation) AND coalesce(rw.load_ms, rw.duration_ms) IS NOT NULL
                    THEN 1 ELSE 0 END,
               CASE WHEN tokentrace.is_load(rw.operation) THEN coalesce(rw.load_ms, rw.duration_ms) END,
               NULL::numeric, (rw.ms_per_token IS NOT NULL)::integer
        FROM raw rw
    ), t AS MATERIALIZED (
        SELECT s.model,
               coalesce(sum(s.w * s.spans) FILTER (WHERE s.is_call), 0)::bigint AS calls,
               coalesce(sum(s.w * s.input_tokens) FILTER (WHERE s.is_call), 0)::bigint AS input_tokens,
               coalesce(sum(s.w * s.output_tokens) FILTER (WHERE s.is_call), 0)::bigint AS output_tokens,
               sum(s.w * s.timed_inference_ms) FILTER (WHERE s.is_call)
                 / nullif(sum(s.w * s.timed_output_tokens) FILTER (WHERE s.is_call), 0)::float8 AS weighted,
               sum(s.w * s.decode_ms_tokens) FILTER (WHERE s.is_call)
                 / nullif(sum(s.w * s.decode_output_tokens) FILTER (WHERE s.is_call), 0)::float8 AS decode,
               coalesce(sum(s.w * s.spans) FILTER (WHERE s.is_load), 0)::bigint AS loads,
               sum(s.w * s.load_ms_sum) FILTER (WHERE s.is_load)
                 / nullif(sum(s.w * s.load_ms_n) FILTER (WHERE s.is_load), 0)::float8 AS avg_load_ms,
               coalesce(sum(s.w * s.errors), 0)::bigint AS errors,
               sum(s.w * s.mpt_packed) FILTER (WHERE s.is_call) AS packed,
               -- values in the window's ms/token histogram: its p50/p95 ranks
               sum(s.w * s.timed_calls) FILTER (WHERE s.is_call)::float8 AS timed
        FROM s
        GROUP BY s.model
        HAVING sum(s.w * s.spans) <> 0
    ), ht AS MATERIALIZED (
        -- mpt_digits(), inlined: the rollups' packed sum as text once per model, then
        -- 12 bytes per bin. Only rollup pieces are packed: they cover the window's ends
        -- rounded to 5 minutes, a real histogram with no negative bin; the raw edges
        -- (weights ±1) join bin by bin in c.
        SELECT hp.model, convert_to(lpad(d.ip, 12 * ((length(d.ip) + 11) / 12), '0'), 'UTF8') AS ip,
               convert_to(rpad(d.fp, 12 * ((length(d.fp) + 11) / 12), '0'), 'UTF8') AS fp
        FROM t hp CROSS JOIN LATERAL (
            SELECT split_part(x.t, '.', 1) AS ip, split_part(x.t, '.', 2) AS fp
            FROM (SELECT trim_scale(hp.packed)::text AS t) x) d
        WHERE hp.packed > 0
    ), h AS MATERIALIZED (
        SELECT ht.model,
               CASE g.pos WHEN -1365 THEN -32768 WHEN 10922 THEN 32767 ELSE g.pos END::smallint AS bin,
               encode(CASE WHEN g.pos >= 0 THEN substr(ht.ip, length(ht.ip) - 12 * g.pos - 11, 12)
                           ELSE substr(ht.fp, -12 * g.pos - 11, 12) END, 'escape')::bigint AS n
        FROM ht CROSS JOIN LATERAL generate_series(-(length(ht.fp) / 12), length(ht.ip) / 12 - 1) AS g(pos)
    ), c AS (
        -- Cumulative count by bin; a bin's rows (decoded, raw edge values) are peers,
        -- so each of them carries the bin's full cumulative count.
        SELECT hb.model, hb.bin, sum(hb.n) OVER (PARTITION BY hb.model ORDER BY hb.bin) AS cum
        FROM (SELECT h.model, h.bin, h.n FROM h WHERE h.n <> 0
              UNION ALL
              SELECT rw.model,
                     CASE WHEN b.bin <= -1365 THEN -32768 WHEN b.bin >= 10922 THEN 32767
                          ELSE b.bin END::smallint,
                     rw.w
              FROM raw rw CROSS JOIN LATERAL (SELECT tokentrace.mpt_bin(rw.ms_per_token) AS bin) b
              WHERE rw.ms_per_token IS NOT NULL AND tokentrace.counts_as_call(rw.operation)) hb
    ), k AS (
        SELECT t.model, 0.5::float8 * (t.timed - 1) AS r50, 0.95::float8 * (t.timed - 1) AS r95,
               floor(0.5::float8 * (t.timed - 1))::bigint AS k50,
               floor(0.95::float8 * (t.timed - 1))::bigint AS k95
        FROM t WHERE t.timed > 0
    ), q AS (
        SELECT k.model, k.r50, k.r95,
               min(c.bin) FILTER (WHERE c.cum > k.k50) AS lo50,
               min(c.bin) FILTER (WHERE c.cum > k.k50 + 1) AS hi50,
               min(c.bin) FILTER (WHERE c.cum > k.k95) AS lo95,
               min(c.bin) FILTER (WHERE c.cum > k.k95 + 1) AS hi95
        FROM c JOIN k ON k.model = c.model
        GROUP BY k.model, k.r50, k.r95
    )
    SELECT t.model, t.calls, t.input_tokens, t.output_tokens, t.weighted,
           CASE WHEN q.r50 = floor(q.r50) THEN tokentrace.mpt_value(q.lo50)
                ELSE tokentrace.mpt_value(q.lo50) + (q.r50 - floor(q.r50))
                     * (tokentrace.mpt_value(q.hi50) - tokentrace.mpt_value(q.lo50)) END,
           CASE WHEN q.r95 = floor(q.r95) THEN tokentrace.mpt_value(q.lo95)
                ELSE tokentrace.mpt_value(q.lo95) + (q.r95 - floor(q.r95))
                     * (tokentrace.mpt_value(q.hi95) - tokentrace.mpt_value(q.lo95)) END,
           t.decode, t.loads, t.avg_load_ms, t.errors
    FROM t LEFT JOIN q ON q.model = t.model
    ORDER BY 5 NULLS LAST, 1;
END
$$;

-- As in 0080, with the rule; raw: as 0020's (0080 renamed it), with the rule and
-- without the wrappers.
CREATE OR REPLACE FUNCTION tokentrace.efficiency_series_range(
    range_start  timestamptz,
    range_end    timestamptz,
    bucket       interval,
    model_filter text DEFAULT NULL)
RETURNS TABLE (
    bucket_start          timestamptz,
    model                 text,
    calls                 bigint,
    input_tokens          bigint,
    output_tokens         bigint,
    weighted_ms_per_token double precision,
    p50_ms_per_token      double precision,
    p95_ms_per_token      double precision,
    prefill_ms_per_token  double precision,  -- per input token, weighted by input tokens
    decode_ms_per_token   double precision,  -- per output token, weighted by output tokens
    loads                 bigint,
    avg_load_ms           double precision,
    load_ms               double precision,  -- time spent loading: load spans + loads inside calls
    inference_ms          double precision,  -- time spent inferring (load excluded)
    errors                bigint)
LANGUAGE plpgsql STABLE
-- One plan per session, as efficiency_range() (0070): nothing in it is worth re-planning.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    -- Parameters under names no column has (#variable_conflict use_column).
    stride interval := bucket;
    tile   interval;
BEGIN
    IF isfinite(range_start) AND range_start < range_end AND stride > interval '0' THEN
        SELECT g.grain INTO tile
        FROM (VALUES (1, interval '24:00:00'), (2, interval '01:00:00'), (3, interval '00:05:00')) g(k, grain)
        WHERE date_part('month', stride) = 0 AND date_part('year', stride) = 0
          AND mod(extract(epoch FROM stride) * 1000000, extract(epoch FROM g.grain) * 1000000) = 0
          AND range_start = tokentrace.bucket_floor(range_start, g.grain)
          AND (range_end = 'infinity' OR range_end = tokentrace.bucket_floor(range_end, g.grain))
          AND (g.grain <> interval '00:05:00'
               OR range_start >= coalesce((SELECT st.value::timestamptz FROM tokentrace.settings st
                                           WHERE st.key = 'raw_horizon'), '-infinity'))
        ORDER BY g.k
        LIMIT 1;
    END IF;
    IF tile IS NULL THEN
        RETURN QUERY SELECT * FROM tokentrace.efficiency_series_raw(range_start, range_end, stride, model_filter);
        RETURN;
    END IF;
    RETURN QUERY
    WITH roll AS MATERIALIZED (
        SELECT date_bin(stride, r.bucket, range_start) AS b, r.model,
               tokentrace.counts_as_call(r.operation) AS is_call, tokentrace.is_load(r.operation) AS is_load,
               r.spans, r.errors, r.input_tokens, r.output_tokens,
               r.timed_inference_ms, r.timed_output_tokens, r.decode_ms_tokens, r.decode_output_tokens,
               r.load_ms_n, r.load_ms_sum, r.prefill_ms_tokens, r.prefill_input_tokens,
               r.inference_ms_total, r.load_ms_total, r.mpt_packed
        FROM tokentrace.span_rollups r
        WHERE r.grain = tile AND r.bucket >= range_start AND r.bucket < range_end
          AND (model_filter IS NULL OR r.model = model_filter)
    ), t AS MATERIALIZED (
        SELECT s.b, s.model,
               coalesce(sum(s.spans) FILTER (WHERE s.is_call), 0)::bigint AS calls,
               coalesce(sum(s.input_tokens) FILTER (WHERE s.is_call), 0)::bigint AS input_tokens,
               coalesce(sum(s.output_tokens) FILTER (WHERE s.is_call), 0)::bigint AS output_tokens,
               sum(s.timed_inference_ms) FILTER (WHERE s.is_call)
                 / nullif(sum(s.timed_output_tokens) FILTER (WHERE s.is_call), 0)::float8 AS weighted,
               sum(s.prefill_ms_tokens) FILTER (WHERE s.is_call)
                 / nullif(sum(s.prefill_input_tokens) FILTER (WHERE s.is_call), 0)::float8 AS prefill,
               sum(s.decode_ms_tokens) FILTER (WHERE s.is_call)
                 / nullif(sum(s.decode_output_tokens) FILTER (WHERE s.is_call), 0)::float8 AS decode,
               coalesce(sum(s.spans) FILTER (WHERE s.is_load), 0)::bigint AS loads,
               sum(s.load_ms_sum) FILTER (WHERE s.is_load)
                 / nullif(sum(s.load_ms_n) FILTER (WHERE s.is_load), 0)::float8 AS avg_load_ms,
               coalesce(sum(s.load_ms_sum) FILTER (WHERE s.is_load), 0)
                 + coalesce(sum(s.load_ms_total) FILTER (WHERE NOT s.is_load), 0) AS load_ms,
               coalesce(sum(s.inference_ms_total) FILTER (WHERE s.is_call), 0) AS inference_ms,
               coalesce(sum(s.errors), 0)::bigint AS errors,
               -- a row rolled up before 0080 whose spans are pruned: its four sums are not known
               bool_and(s.inference_ms_total IS NOT NULL) AS known,
               sum(s.mpt_packed) FILTER (WHERE s.is_call) AS packed
        FROM roll s
        GROUP BY s.b, s.model
        HAVING sum(s.spans) <> 0  -- a bucket of wrappers only is no model's bucket
    ), u AS (
        -- Each bucket's histogram as 0003's arrays, for mpt_quantile(): the same figures
        -- as efficiency_range()'s inlined window sums, and faster over hundreds of buckets.
        SELECT t.b, t.model, x.bins, x.counts
        FROM t CROSS JOIN LATERAL tokentrace.mpt_unpack(t.packed) x
        WHERE t.packed > 0
    )
    SELECT t.b, t.model, t.calls, t.input_tokens, t.output_tokens, t.weighted,
           tokentrace.mpt_quantile(u.bins, u.counts, 0.5), tokentrace.mpt_quantile(u.bins, u.counts, 0.95),
           CASE WHEN t.known THEN t.prefill END, t.decode, t.loads, t.avg_load_ms,
           CASE WHEN t.known THEN t.load_ms END, CASE WHEN t.known THEN t.inference_ms END, t.errors
    FROM t LEFT JOIN u ON u.b = t.b AND u.model = t.model
    ORDER BY 1, 2;
END
$$;

CREATE OR REPLACE FUNCTION tokentrace.efficiency_series_raw(
    range_start  timestamptz,
    range_end    timestamptz,
    bucket       interval,
    model_filter text DEFAULT NULL)
RETURNS TABLE (
    bucket_start          timestamptz,
    model                 text,
    calls                 bigint,
    input_tokens          bigint,
    output_tokens         bigint,
    weighted_ms_per_token double precision,
    p50_ms_per_token      double precision,
    p95_ms_per_token      double precision,
    prefill_ms_per_token  double precision,  -- per input token, weighted by input tokens
    decode_ms_per_token   double precision,  -- per output token, weighted by output tokens
    loads                 bigint,
    avg_load_ms           double precision,
    load_ms               double precision,  -- time spent loading: load spans + loads inside calls
    inference_ms          double precision,  -- time spent inferring (load excluded)
    errors                bigint)
LANGUAGE sql STABLE AS $$
    WITH s AS (
        SELECT date_bin(bucket, sp.start_time, range_start) AS bucket_start,
               sp.model,
               tokentrace.is_load(sp.operation) AS is_load,
               sp.input_tokens, sp.output_tokens, sp.inference_ms, sp.ms_per_token,
               sp.prefill_ms_per_token, sp.decode_ms_per_token, sp.load_ms, sp.duration_ms,
               sp.status
        FROM tokentrace.spans sp
        WHERE sp.start_time >= range_start AND sp.start_time < range_end
          AND sp.model IS NOT NULL
          AND NOT sp.wrapper
          AND (model_filter IS NULL OR sp.model = model_filter)
    )
    SELECT s.bucket_start,
           s.model,
           count(*) FILTER (WHERE NOT s.is_load),
           coalesce(sum(s.input_tokens) FILTER (WHERE NOT s.is_load), 0)::bigint,
           coalesce(sum(s.output_tokens) FILTER (WHERE NOT s.is_load), 0)::bigint,
           sum(s.inference_ms) FILTER (WHERE NOT s.is_load AND s.ms_per_token IS NOT NULL)
             / nullif(sum(s.output_tokens) FILTER (WHERE NOT s.is_load AND s.ms_per_token IS NOT NULL), 0),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY s.ms_per_token) FILTER (WHERE NOT s.is_load),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY s.ms_per_token) FILTER (WHERE NOT s.is_load),
           sum(s.prefill_ms_per_token * s.input_tokens)
               FILTER (WHERE NOT s.is_load AND s.prefill_ms_per_token IS NOT NULL)
             / nullif(sum(s.input_tokens)
               FILTER (WHERE NOT s.is_load AND s.prefill_ms_per_token IS NOT NULL), 0),
           sum(s.decode_ms_per_token * s.output_tokens)
               FILTER (WHERE NOT s.is_load AND s.decode_ms_per_token IS NOT NULL)
             / nullif(sum(s.output_tokens)
               FILTER (WHERE NOT s.is_load AND s.decode_ms_per_token IS NOT NULL), 0),
           count(*) FILTER (WHERE s.is_load),
           avg(coalesce(s.load_ms, s.duration_ms)) FILTER (WHERE s.is_load),
           coalesce(sum(CASE WHEN s.is_load THEN coalesce(s.load_ms, s.duration_ms)
                             ELSE s.load_ms END), 0),
           coalesce(sum(s.inference_ms) FILTER (WHERE NOT s.is_load), 0),
           count(*) FILTER (WHERE s.status = 'ERROR')
    FROM s
    GROUP BY s.bucket_start, s.model
    ORDER BY s.bucket_start, s.model
$$;

-- --- retention: link partitions go with their day ----------------------------------------
-- As in 0050, and the call_links partitions of the days removed are dropped.
CREATE OR REPLACE FUNCTION tokentrace.prune(
    retention        interval DEFAULT '60 days',
    rollup_retention interval DEFAULT NULL,
    exact_counts     boolean  DEFAULT false,
    defer_release    boolean  DEFAULT false)
RETURNS TABLE (partition_name text, day date, spans bigint, rollup_rows bigint, kind text)
LANGUAGE plpgsql AS $$
DECLARE
    p             record;
    cutoff        timestamptz := now() - retention;
    keep_rollups  interval := coalesce(rollup_retention,
                                       make_interval(days => tokentrace.rollup_retention_days()));
    horizon       timestamptz;
    rollup_cutoff timestamptz;
    names         text[] := '{}';
    days          date[] := '{}';
    exact         bigint[] := '{}';
    counted       bigint;
    lower         timestamptz;
    parts         regclass[] := '{}';
    fine_days     date[];
    fine_n        bigint[];
    fine_spans    bigint[];
BEGIN
    IF retention < interval '1 day' THEN
        RAISE EXCEPTION 'retention must be at least 1 day, got %', retention;
    END IF;
    IF keep_rollups < retention THEN
        RAISE EXCEPTION 'rollup retention (%) must be at least the raw retention (%)',
            keep_rollups, retention;
    END IF;
    -- Two schedulers pruning at once would race to drop the same partitions.
    PERFORM pg_advisory_xact_lock(hashtext('tokentrace.prune'));
    horizon := tokentrace.bucket_floor(cutoff, '24:00:00');
    rollup_cutoff := tokentrace.bucket_floor(now() - keep_rollups, '24:00:00');

    FOR p IN
        SELECT sp.partition, sp.partition_name, sp.day FROM tokentrace.span_partitions sp
        WHERE ((sp.day + 1)::timestamp AT TIME ZONE 'UTC') <= cutoff
        ORDER BY sp.day
    LOOP
        IF exact_counts THEN
            EXECUTE format('SELECT count(*) FROM %s', p.partition) INTO counted;
            exact := exact || counted;
        END IF;
        parts := parts || p.partition;
        names := names || p.partition_name;
        days := days || p.day;
    END LOOP;
    lower := least(tokentrace.raw_horizon(), (days[1]::timestamp AT TIME ZONE 'UTC'));

    IF defer_release THEN
        -- The spans and rollup rows of each day, read (not deleted: the release does
        -- that) before the lock on spans is taken, so the lock is held only for the
        -- catalog changes below.
        SELECT coalesce(array_agg(x.day), '{}'), coalesce(array_agg(x.n), '{}'),
               coalesce(array_agg(x.spans), '{}')
        INTO fine_days, fine_n, fine_spans
        FROM (SELECT (r.bucket AT TIME ZONE 'UTC')::date AS day, count(*) AS n,
                     sum(r.spans)::bigint AS spans
              FROM tokentrace.span_rollups r
              WHERE r.grain = '00:05:00' AND r.bucket >= lower AND r.bucket < horizon
              GROUP BY 1) x;
    END IF;

    -- DETACH and DROP take an ACCESS EXCLUSIVE lock on tokentrace.spans until commit:
    -- writers wait, so no span for a removed day can be stored (and rolled up) after
    -- its 5-minute rollups were counted (deferred) or deleted (below).
    FOR i IN 1 .. coalesce(array_length(parts, 1), 0) LOOP
        IF defer_release THEN
            EXECUTE format('ALTER TABLE tokentrace.spans DETACH PARTITION %s', parts[i]);
            -- A same-named table still waiting for release (a deferred prune whose
            -- release never ran, then a late span recreating the day): dropped now.
            IF to_regclass(format('tokentrace_expired.%I', names[i])) IS NOT NULL THEN
                EXECUTE format('DROP TABLE tokentrace_expired.%I', names[i]);
            END IF;
            EXECUTE format('ALTER TABLE %s SET SCHEMA tokentrace_expired', parts[i]);
        ELSE
            EXECUTE format('DROP TABLE %s', parts[i]);
        END IF;
    END LOOP;

    -- The link rows of those days go with them (small tables: dropped now, deferred or not).
    FOR p IN
        SELECT c.oid::regclass AS partition FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'tokentrace.call_links'::regclass AND c.relname ~ '^call_links_[0-9]{8}$'
          AND to_date(substr(c.relname::text, 12), 'YYYYMMDD') < (horizon AT TIME ZONE 'UTC')::date
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %s', p.partition);
    END LOOP;

    RETURN QUERY
    WITH gone AS (
        DELETE FROM tokentrace.span_rollups r
        WHERE NOT defer_release
          AND r.grain = '00:05:00' AND r.bucket >= lower AND r.bucket < horizon
        RETURNING r.bucket, r.spans
    ), per_day AS (
        SELECT (g.bucket AT TIME ZONE 'UTC')::date AS day, count(*) AS n, sum(g.spans) AS spans
        FROM gone g GROUP BY 1
        UNION ALL
        SELECT * FROM unnest(fine_days, fine_n, fine_spans)
    ), dropped AS (
        SELECT * FROM unnest(names, days, CASE WHEN exact_counts THEN exact END)
            AS x(partition_name, day, spans)
    )
    SELECT d.partition_name, coalesce(d.day, r.day),
           CASE WHEN d.day IS NULL THEN 0
                WHEN exact_counts THEN d.spans
                ELSE coalesce(r.spans, 0) END::bigint,
           coalesce(r.n, 0)::bigint, 'raw'::text
    FROM dropped d FULL JOIN per_day r ON r.day = d.day
    ORDER BY 2;

    -- Hourly and daily rollups past the rollup retention: deleted now, or (deferred)
    -- counted now and deleted by the release.
    RETURN QUERY
    WITH gone AS (
        DELETE FROM tokentrace.span_rollups r
        WHERE NOT defer_release
          AND r.grain IN ('01:00:00', '24:00:00') AND r.bucket < rollup_cutoff
        RETURNING r.grain, r.bucket, r.spans
    ), expiring AS (
        SELECT g.grain, g.bucket, g.spans FROM gone g
        UNION ALL
        SELECT r.grain, r.bucket, r.spans FROM tokentrace.span_rollups r
        WHERE defer_release AND r.grain IN ('01:00:00', '24:00:00') AND r.bucket < rollup_cutoff
    )
    SELECT NULL::text, (g.bucket AT TIME ZONE 'UTC')::date,
           coalesce(sum(g.spans) FILTER (WHERE g.grain = '24:00:00'), 0)::bigint, count(*),
           'rollup'::text
    FROM expiring g GROUP BY 2 ORDER BY 2;

    INSERT INTO tokentrace.settings (key, value)
    VALUES ('raw_horizon', to_char(horizon AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00')
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
    WHERE excluded.value::timestamptz > tokentrace.settings.value::timestamptz;
    IF rollup_retention IS NOT NULL THEN
        UPDATE tokentrace.settings
        SET value = round(extract(epoch FROM rollup_retention) / 86400)::integer::text
        WHERE key = 'rollup_retention_days';
    END IF;
    IF NOT defer_release THEN
        -- Tables a deferred prune left behind (its release never ran) go too.
        PERFORM tokentrace_expired.release_pruned();
    END IF;
END
$$;

-- --- the spans already stored -------------------------------------------------------------
-- Link partitions for every day stored (and the next), wrappers marked, the rollups of
-- their days rebuilt from the raw spans, link rows for the last two days' call spans.
SELECT tokentrace.ensure_partitions(coalesce(array_agg(sp.day), '{}'))
FROM tokentrace.span_partitions sp;

DO $$
DECLARE
    d date;
BEGIN
    CREATE TEMP TABLE tt_new_wrappers ON COMMIT DROP AS
    SELECT p.start_time, p.trace_id, p.span_id
    FROM tokentrace.spans p
    WHERE p.model IS NOT NULL AND tokentrace.counts_as_call(p.operation)
      AND EXISTS (SELECT FROM tokentrace.spans c
                  WHERE c.trace_id = p.trace_id AND c.parent_span_id = p.span_id
                    AND c.model IS NOT NULL AND tokentrace.counts_as_call(c.operation));
    UPDATE tokentrace.spans sp SET wrapper = true
    FROM tt_new_wrappers w
    WHERE sp.start_time = w.start_time AND sp.trace_id = w.trace_id AND sp.span_id = w.span_id;
    FOR d IN
        SELECT DISTINCT (w.start_time AT TIME ZONE 'UTC')::date FROM tt_new_wrappers w
        WHERE w.start_time >= tokentrace.raw_horizon()
        ORDER BY 1
    LOOP
        PERFORM tokentrace.rebuild_rollups(d::timestamp AT TIME ZONE 'UTC',
                                           (d + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END
$$;

WITH recent AS (
    SELECT sp.trace_id, sp.span_id, sp.parent_span_id, sp.start_time, sp.end_time, sp.wrapper
    FROM tokentrace.spans sp
    WHERE sp.start_time >= now() - interval '2 days' AND sp.model IS NOT NULL
      AND tokentrace.counts_as_call(sp.operation)
), keys AS (
    SELECT (r.start_time AT TIME ZONE 'UTC')::date AS day, r.trace_id, r.span_id, r.start_time,
           r.wrapper AS has_child
    FROM recent r
    UNION ALL
    SELECT (r.start_time AT TIME ZONE 'UTC')::date + 1, r.trace_id, r.span_id, r.start_time, r.wrapper
    FROM recent r
    WHERE (r.end_time AT TIME ZONE 'UTC')::date > (r.start_time AT TIME ZONE 'UTC')::date
    UNION ALL
    SELECT (r.start_time AT TIME ZONE 'UTC')::date, r.trace_id, r.parent_span_id, NULL, true
    FROM recent r
    WHERE r.parent_span_id IS NOT NULL
)
INSERT INTO tokentrace.call_links (day, trace_id, span_id, start_time, has_child)
SELECT k.day, k.trace_id, k.span_id, min(k.start_time), bool_or(k.has_child)
FROM keys k
GROUP BY 1, 2, 3
ON CONFLICT DO NOTHING;

-- CREATE OR REPLACE reset SECURITY DEFINER (0030).
SELECT tokentrace.secure_report_functions();
