-- tokentrace schema: faster window reads, and a prune that does no per-span work.
--
-- 1. The raw edges of a window. span_summary() was a SQL function; as a SECURITY
--    DEFINER function (0030) it is never inlined, so PostgreSQL planned its query
--    afresh on every call with the window's bounds as unknown parameters: a plan
--    over every day partition (60 and more), pruned only when it ran. That planning
--    was most of what a 24-hour efficiency report cost (~3 of ~6.5 ms at 10 M spans).
--    It is now PL/pgSQL running its query through EXECUTE … USING, which plans it
--    with the bounds as constants: only the day partition(s) the edge lies in are
--    planned (~0.1 ms). A variant without the histogram (window_parts(…, false))
--    skips the binning altogether.
-- 2. prune() no longer counts a dropped day's spans with count(*) (a read of the
--    whole partition, the only per-span work left in it). `spans` is now the number
--    of spans with a model the day's 5-minute rollups summed, read from the rows it
--    deletes anyway: exact whenever every span was written through tokentrace.spans
--    (the rollups then hold every one), and it leaves out spans without a model,
--    which no report counts. prune(…, exact_counts => true) counts the partition
--    with count(*) first, as before, for every span stored in it.

-- --- raw spans summed like the rollups --------------------------------------------------
-- The query both span_summary() variants run; $1..$4 are range_start, range_end,
-- grain, model_filter. A function of its own (not a SECURITY DEFINER report
-- function) could be inlined, but a reader must not call one that reads spans; so
-- the text is built here and run with EXECUTE.
CREATE FUNCTION tokentrace.span_summary(
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
    spans_q constant text := $q$
        SELECT CASE WHEN $3::interval IS NULL THEN $1::timestamptz
                    ELSE tokentrace.bucket_floor(sp.start_time, $3::interval) END AS bucket,
               sp.model, coalesce(sp.operation, '') AS operation, sp.start_time, sp.status,
               sp.input_tokens, sp.output_tokens, sp.inference_ms, sp.ms_per_token,
               sp.decode_ms_per_token, sp.load_ms, sp.duration_ms
        FROM tokentrace.spans sp
        WHERE sp.start_time >= $1::timestamptz AND sp.start_time < $2::timestamptz
          AND sp.model IS NOT NULL
          AND ($4::text IS NULL OR sp.model = $4::text)
    $q$;
    sums_q constant text := $q$
        SELECT s.bucket, s.model, s.operation,
               count(*) AS spans,
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
                   FILTER (WHERE s.operation = 'load_model') AS load_ms_n,
               sum(coalesce(s.load_ms, s.duration_ms))
                   FILTER (WHERE s.operation = 'load_model') AS load_ms_sum,
               min(s.start_time) AS first_start,
               max(s.start_time) AS last_start
        FROM s
        GROUP BY 1, 2, 3
    $q$;
BEGIN
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

COMMENT ON FUNCTION tokentrace.span_summary(timestamptz, timestamptz, interval, text, boolean) IS
    'Raw spans of [range_start, range_end) summed like the rollups, per bucket of grain; histograms optional (tokentrace).';

CREATE OR REPLACE FUNCTION tokentrace.span_summary(
    range_start  timestamptz,
    range_end    timestamptz,
    grain        interval DEFAULT NULL,
    model_filter text     DEFAULT NULL)
RETURNS TABLE (
    bucket timestamptz, model text, operation text, spans bigint, errors bigint,
    input_tokens bigint, output_tokens bigint, timed_calls bigint,
    timed_inference_ms double precision, timed_output_tokens bigint,
    decode_ms_tokens double precision, decode_output_tokens bigint, load_ms_n bigint,
    load_ms_sum double precision, first_start timestamptz, last_start timestamptz,
    mpt_bins smallint[], mpt_counts bigint[])
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY SELECT * FROM tokentrace.span_summary(range_start, range_end, grain, model_filter, true);
END
$$;

-- --- the pieces of a window ---------------------------------------------------------------
-- As in 0003; the raw edges go through the span_summary() above.
CREATE OR REPLACE FUNCTION tokentrace.window_parts(
    range_start  timestamptz,
    range_end    timestamptz,
    model_filter text    DEFAULT NULL,
    histograms   boolean DEFAULT true)
RETURNS TABLE (
    source text, grain interval, bucket timestamptz, model text, operation text,
    spans bigint, errors bigint, input_tokens bigint, output_tokens bigint, timed_calls bigint,
    timed_inference_ms double precision, timed_output_tokens bigint,
    decode_ms_tokens double precision, decode_output_tokens bigint, load_ms_n bigint,
    load_ms_sum double precision, first_start timestamptz, last_start timestamptz,
    mpt_bins smallint[], mpt_counts bigint[])
LANGUAGE plpgsql STABLE AS $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT * FROM tokentrace.window_plan(range_start, range_end) LOOP
        IF p.source = 'rollup' THEN
            RETURN QUERY
            SELECT 'rollup'::text, r.grain, r.bucket, r.model, nullif(r.operation, ''), r.spans,
                   r.errors, r.input_tokens, r.output_tokens, r.timed_calls, r.timed_inference_ms,
                   r.timed_output_tokens, r.decode_ms_tokens, r.decode_output_tokens, r.load_ms_n,
                   r.load_ms_sum, r.first_start, r.last_start,
                   CASE WHEN histograms THEN r.mpt_bins END, CASE WHEN histograms THEN r.mpt_counts END
            FROM tokentrace.span_rollups r
            WHERE r.grain = p.grain AND r.bucket >= p.piece_start AND r.bucket < p.piece_end
              AND (model_filter IS NULL OR r.model = model_filter);
        ELSE
            RETURN QUERY
            SELECT 'raw'::text, NULL::interval, s.bucket, s.model, nullif(s.operation, ''), s.spans,
                   s.errors, s.input_tokens, s.output_tokens, s.timed_calls, s.timed_inference_ms,
                   s.timed_output_tokens, s.decode_ms_tokens, s.decode_output_tokens, s.load_ms_n,
                   s.load_ms_sum, s.first_start, s.last_start, s.mpt_bins, s.mpt_counts
            FROM tokentrace.span_summary(p.piece_start, p.piece_end, NULL, model_filter, histograms) s;
        END IF;
    END LOOP;
END
$$;

-- --- retention ------------------------------------------------------------------------------
-- As in 0003, with `spans` taken from the 5-minute rollup rows deleted with each day
-- (exact_counts => false, the default) or counted in the partition (true).
DROP FUNCTION IF EXISTS tokentrace.prune(interval, interval);

CREATE FUNCTION tokentrace.prune(
    retention        interval DEFAULT '60 days',
    rollup_retention interval DEFAULT NULL,
    exact_counts     boolean  DEFAULT false)
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

    -- Partitions first: DROP waits for writers and holds them off until we commit, so
    -- no span for a dropped day can be stored (and rolled up) after its rollups go.
    FOR p IN
        SELECT sp.partition, sp.partition_name, sp.day FROM tokentrace.span_partitions sp
        WHERE ((sp.day + 1)::timestamp AT TIME ZONE 'UTC') <= cutoff
        ORDER BY sp.day
    LOOP
        IF exact_counts THEN
            EXECUTE format('SELECT count(*) FROM %s', p.partition) INTO counted;
            exact := exact || counted;
        END IF;
        EXECUTE format('DROP TABLE %s', p.partition);
        names := names || p.partition_name;
        days := days || p.day;
    END LOOP;

    -- The 5-minute rollups of every day before the horizon, in one pass: per day, the
    -- rows deleted and the spans they summed. Those before the previous horizon went
    -- with the previous prune, unless a late span recreated its day (a dropped day
    -- here): the scan starts at whichever is earlier, so it does not walk the index
    -- entries of every day pruned before (dead rows until VACUUM reclaims them).
    lower := least(tokentrace.raw_horizon(), (days[1]::timestamp AT TIME ZONE 'UTC'));
    RETURN QUERY
    WITH gone AS (
        DELETE FROM tokentrace.span_rollups r
        WHERE r.grain = '00:05:00' AND r.bucket >= lower AND r.bucket < horizon
        RETURNING r.bucket, r.spans
    ), per_day AS (
        SELECT (g.bucket AT TIME ZONE 'UTC')::date AS day, count(*) AS n, sum(g.spans) AS spans
        FROM gone g GROUP BY 1
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

    -- Hourly and daily rollups past the rollup retention.
    RETURN QUERY
    WITH gone AS (
        DELETE FROM tokentrace.span_rollups r
        WHERE r.grain IN ('01:00:00', '24:00:00') AND r.bucket < rollup_cutoff
        RETURNING r.grain, r.bucket, r.spans
    )
    SELECT NULL::text, (g.bucket AT TIME ZONE 'UTC')::date,
           coalesce(sum(g.spans) FILTER (WHERE g.grain = '24:00:00'), 0)::bigint, count(*),
           'rollup'::text
    FROM gone g GROUP BY 2 ORDER BY 2;

    INSERT INTO tokentrace.settings (key, value)
    VALUES ('raw_horizon', to_char(horizon AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00')
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
    WHERE excluded.value::timestamptz > tokentrace.settings.value::timestamptz;
    -- The rollup retention in force, for the footprint's projection.
    IF rollup_retention IS NOT NULL THEN
        UPDATE tokentrace.settings
        SET value = round(extract(epoch FROM rollup_retention) / 86400)::integer::text
        WHERE key = 'rollup_retention_days';
    END IF;
END
$$;

COMMENT ON FUNCTION tokentrace.prune(interval, interval, boolean) IS
    'Drops raw day partitions past the retention (with their 5-minute rollups) and rollups past theirs; one row per UTC day (tokentrace).';

REVOKE EXECUTE ON FUNCTION tokentrace.prune(interval, interval, boolean) FROM PUBLIC;

SELECT tokentrace.secure_report_functions();
