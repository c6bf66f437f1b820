-- tokentrace schema, part 3: rollups kept at write time, reports that read them,
-- retention that keeps them longer than raw spans, and a footprint that projects growth.
--
-- Why: a fleet sending 100 spans/s stores 500 million spans in 60 days; a report
-- that scans tokentrace.spans cannot answer in milliseconds at that size. Every
-- span with a model is summed, in the same transaction that stores it, into
-- tokentrace.span_rollups at three grains (5 minutes, 1 hour, 1 day, all UTC).
-- A report over [start, end) reads whole days, then whole hours at the two ends,
-- then whole 5-minute buckets, and scans raw spans only for the partial 5 minutes
-- at each end: sums and counts equal a raw scan exactly, and the raw part is at
-- most ten minutes of spans whatever the table's size.
--
-- The rollups are kept by a statement-level AFTER INSERT trigger with a transition
-- table: it sees exactly the rows the statement inserted (all of a COPY; for
-- INSERT … ON CONFLICT DO NOTHING only the rows that did not conflict), so a
-- retried batch is never counted twice, and a rolled-back batch leaves no trace.
-- Rows inserted straight into a day partition (spans_YYYYMMDD) bypass the parent's
-- statement trigger: always write to tokentrace.spans.
--
-- ms/token percentiles come from a fixed log-scale histogram: 16 bins per doubling,
-- bin b = floor(16·log2(x)) holds [2^(b/16), 2^((b+1)/16)); a bin stands for its
-- geometric middle 2^((b+0.5)/16), at most 2^(1/32) − 1 = 2.19 % from any value in
-- it. Percentiles interpolate between bins as percentile_cont does between values,
-- so p50/p95 are within 2.19 % of percentile_cont over the same spans.
--
-- Retention: prune() drops whole day partitions of raw spans (and the 5-minute
-- rollups of those days) past the raw retention; hourly and daily rollups stay
-- until the rollup retention (TOKENTRACE_ROLLUP_RETENTION_DAYS, default 400). Before
-- the "raw horizon" (the day boundary prune last cut at) windows are answered from
-- hourly and daily rollups only, so they resolve to whole hours there.

INSERT INTO tokentrace.settings (key, value) VALUES ('rollup_retention_days', '400')
ON CONFLICT (key) DO NOTHING;

-- How long hourly and daily rollups are kept (prune() records the value it used).
CREATE FUNCTION tokentrace.rollup_retention_days() RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT value::integer FROM tokentrace.settings
                     WHERE key = 'rollup_retention_days'), 400)
$$;

-- Raw spans and 5-minute rollups before this instant have been pruned (-infinity
-- until the first prune). Windows starting earlier are answered at hour resolution.
CREATE FUNCTION tokentrace.raw_horizon() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT value::timestamptz FROM tokentrace.settings WHERE key = 'raw_horizon'),
                    '-infinity'::timestamptz)
$$;

-- --- buckets ----------------------------------------------------------------------
-- Grains are intervals of fixed length ('24:00:00', not '1 day'): adding '1 day' to a
-- timestamptz follows the session time zone's daylight-saving changes; buckets are UTC.
CREATE FUNCTION tokentrace.bucket_floor(ts timestamptz, grain interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN isfinite(ts) THEN date_bin(grain, ts, timestamptz '2000-01-01 00:00:00+00')
                ELSE ts END
$$;

CREATE FUNCTION tokentrace.bucket_ceil(ts timestamptz, grain interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN NOT isfinite(ts) THEN ts
                WHEN tokentrace.bucket_floor(ts, grain) = ts THEN ts
                ELSE tokentrace.bucket_floor(ts, grain) + grain END
$$;

-- --- the ms/token histogram ---------------------------------------------------------
-- Bin of one ms/token value: floor(16·log2(x)). Zero (and anything not positive)
-- has its own bin, -32768, standing for 0; +Infinity and NaN, which the writer never
-- stores, fall in 32767. Every finite positive double fits a smallint bin.
CREATE FUNCTION tokentrace.mpt_bin(x double precision) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN x IS NULL THEN NULL
                WHEN x = 'Infinity'::float8 OR x = 'NaN'::float8 THEN 32767
                WHEN x <= 0 THEN -32768
                ELSE floor(ln(x) * (16 / ln(2::float8)))::smallint END
$$;

-- The value a bin stands for: its geometric middle.
CREATE FUNCTION tokentrace.mpt_value(bin smallint) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE bin WHEN -32768 THEN 0::float8
                    WHEN 32767 THEN 'Infinity'::float8
                    ELSE exp((bin + 0.5) * (ln(2::float8) / 16)) END
$$;

-- Two sparse histograms (bins ascending, counts alongside) added together.
CREATE FUNCTION tokentrace.mpt_merge(
    a_bins smallint[], a_counts bigint[], b_bins smallint[], b_counts bigint[])
RETURNS TABLE (bins smallint[], counts bigint[])
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(u.bin ORDER BY u.bin), '{}'),
           coalesce(array_agg(u.n ORDER BY u.bin), '{}')
    FROM (SELECT x.bin, sum(x.n)::bigint AS n
          FROM (SELECT * FROM unnest(a_bins, a_counts)
                UNION ALL
                SELECT * FROM unnest(b_bins, b_counts)) x(bin, n)
          GROUP BY x.bin) u
$$;

-- The q-quantile of a histogram (bins ascending), interpolated like percentile_cont:
-- rank q·(n−1) between the values of the bins holding its floor and its ceiling.
CREATE FUNCTION tokentrace.mpt_quantile(bins smallint[], counts bigint[], q double precision)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    total bigint := 0;
    seen  bigint := 0;
    k     bigint;
    frac  double precision;
    lower double precision;
    i     integer;
BEGIN
    FOR i IN 1 .. coalesce(array_length(counts, 1), 0) LOOP
        total := total + counts[i];
    END LOOP;
    IF total = 0 THEN
        RETURN NULL;
    END IF;
    k := floor(q * (total - 1));
    frac := q * (total - 1) - k;
    FOR i IN 1 .. array_length(bins, 1) LOOP
        IF lower IS NULL AND seen + counts[i] > k THEN
            lower := tokentrace.mpt_value(bins[i]);
            IF frac = 0 THEN
                RETURN lower;
            END IF;
        END IF;
        IF seen + counts[i] > k + 1 THEN
            RETURN lower + frac * (tokentrace.mpt_value(bins[i]) - lower);
        END IF;
        seen := seen + counts[i];
    END LOOP;
    RETURN lower;
END
$$;

-- --- the rollup table ---------------------------------------------------------------
-- One row per grain, UTC bucket, model and operation ('' when the span named none).
-- Spans without a model are not rolled up: no report counts them.
CREATE TABLE tokentrace.span_rollups (
    grain                interval         NOT NULL,  -- 00:05:00, 01:00:00 or 24:00:00
    bucket               timestamptz      NOT NULL,  -- start of the bucket (UTC)
    model                text             NOT NULL,
    operation            text             NOT NULL,  -- '' = no gen_ai.operation.name
    spans                bigint           NOT NULL,  -- spans (for load_model: loads)
    errors               bigint           NOT NULL,  -- spans with status ERROR
    input_tokens         bigint           NOT NULL,  -- sum, unknown counted as 0
    output_tokens        bigint           NOT NULL,
    timed_calls          bigint           NOT NULL,  -- spans with ms_per_token
    timed_inference_ms   double precision,           -- their inference_ms, summed
    timed_output_tokens  bigint           NOT NULL,  -- their output_tokens, summed
    decode_ms_tokens     double precision,           -- sum(decode_ms_per_token · output_tokens)
    decode_output_tokens bigint           NOT NULL,  -- output_tokens of spans with decode ms/token
    load_ms_n            bigint           NOT NULL,  -- load_model spans with a known load time
    load_ms_sum          double precision,           -- their coalesce(load_ms, duration_ms), summed
    first_start          timestamptz      NOT NULL,  -- earliest start_time in the bucket
    last_start           timestamptz      NOT NULL,  -- latest start_time in the bucket
    mpt_bins             smallint[]       NOT NULL,  -- ms/token histogram: bins, ascending
    mpt_counts           bigint[]         NOT NULL,  -- … and the count in each
    PRIMARY KEY (grain, bucket, model, operation)
) PARTITION BY LIST (grain);

-- One partition per grain: the footprint sees each tier's size, prune() empties
-- the 5-minute tier on the raw schedule and the others on the rollup schedule.
CREATE TABLE tokentrace.span_rollups_5min PARTITION OF tokentrace.span_rollups
    FOR VALUES IN ('00:05:00');
CREATE TABLE tokentrace.span_rollups_hour PARTITION OF tokentrace.span_rollups
    FOR VALUES IN ('01:00:00');
CREATE TABLE tokentrace.span_rollups_day PARTITION OF tokentrace.span_rollups
    FOR VALUES IN ('24:00:00');

COMMENT ON TABLE tokentrace.span_rollups IS
    'Per grain (5 min, 1 h, 1 day; UTC), bucket, model, operation: sums over spans, kept at write time (tokentrace).';

-- Raw spans of [range_start, range_end) summed like the rollups: per bucket of
-- `grain` (NULL: one bucket starting at range_start), model and operation.
CREATE FUNCTION tokentrace.span_summary(
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
LANGUAGE sql STABLE AS $$
    WITH s AS (
        SELECT CASE WHEN grain IS NULL THEN range_start
                    ELSE tokentrace.bucket_floor(sp.start_time, grain) END AS bucket,
               sp.model, coalesce(sp.operation, '') AS operation, sp.start_time, sp.status,
               sp.input_tokens, sp.output_tokens, sp.inference_ms, sp.ms_per_token,
               sp.decode_ms_per_token, sp.load_ms, sp.duration_ms
        FROM tokentrace.spans sp
        WHERE sp.start_time >= range_start AND sp.start_time < range_end
          AND sp.model IS NOT NULL
          AND (model_filter IS NULL OR sp.model = model_filter)
    ), h AS (
        SELECT b.bucket, b.model, b.operation,
               array_agg(b.bin ORDER BY b.bin) AS bins, array_agg(b.n ORDER BY b.bin) AS counts
        FROM (SELECT s.bucket, s.model, s.operation, tokentrace.mpt_bin(s.ms_per_token) AS bin,
                     count(*) AS n
              FROM s WHERE s.ms_per_token IS NOT NULL
              GROUP BY 1, 2, 3, 4) b
        GROUP BY 1, 2, 3
    ), t AS (
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
    )
    SELECT t.bucket, t.model, t.operation, t.spans, t.errors, t.input_tokens, t.output_tokens,
           t.timed_calls, t.timed_inference_ms, t.timed_output_tokens, t.decode_ms_tokens,
           t.decode_output_tokens, t.load_ms_n, t.load_ms_sum, t.first_start, t.last_start,
           coalesce(h.bins, '{}'), coalesce(h.counts, '{}')
    FROM t LEFT JOIN h ON h.bucket = t.bucket AND h.model = t.model AND h.operation = t.operation
$$;

-- --- keeping the rollups: the trigger -------------------------------------------------
-- The same sums as span_summary(), over the statement's new rows, at all three grains,
-- added to the rows already there. The new rows are read twice, grouped by 5-minute
-- bucket, model and operation (the sums) and by ms/token bin as well (the histogram);
-- hourly and daily rows are built from those few groups. Keys are upserted in one
-- fixed order (grain, bucket, model, operation; byte order of the names) so
-- concurrent writers lock rollup rows in the same order and cannot deadlock on them.
-- Keep in step with span_summary().
CREATE FUNCTION tokentrace.rollup_new_spans() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tokentrace.span_rollups AS r (
        grain, bucket, model, operation, spans, errors, input_tokens, output_tokens,
        timed_calls, timed_inference_ms, timed_output_tokens, decode_ms_tokens,
        decode_output_tokens, load_ms_n, load_ms_sum, first_start, last_start,
        mpt_bins, mpt_counts)
    WITH f AS (
        SELECT tokentrace.bucket_floor(n.start_time, '00:05:00') AS bucket,
               n.model COLLATE "C" AS model, coalesce(n.operation, '') COLLATE "C" AS operation,
               count(*) AS spans,
               count(*) FILTER (WHERE n.status = 'ERROR') AS errors,
               coalesce(sum(n.input_tokens), 0)::bigint AS input_tokens,
               coalesce(sum(n.output_tokens), 0)::bigint AS output_tokens,
               count(*) FILTER (WHERE n.ms_per_token IS NOT NULL) AS timed_calls,
               sum(n.inference_ms) FILTER (WHERE n.ms_per_token IS NOT NULL) AS timed_inference_ms,
               coalesce(sum(n.output_tokens) FILTER (WHERE n.ms_per_token IS NOT NULL), 0)::bigint
                   AS timed_output_tokens,
               sum(n.decode_ms_per_token * n.output_tokens)
                   FILTER (WHERE n.decode_ms_per_token IS NOT NULL) AS decode_ms_tokens,
               coalesce(sum(n.output_tokens) FILTER (WHERE n.decode_ms_per_token IS NOT NULL), 0)::bigint
                   AS decode_output_tokens,
               count(coalesce(n.load_ms, n.duration_ms))
                   FILTER (WHERE n.operation = 'load_model') AS load_ms_n,
               sum(coalesce(n.load_ms, n.duration_ms))
                   FILTER (WHERE n.operation = 'load_model') AS load_ms_sum,
               min(n.start_time) AS first_start,
               max(n.start_time) AS last_start
        FROM new_spans n
        WHERE n.model IS NOT NULL
        GROUP BY 1, 2, 3
    ), fb AS (
        SELECT tokentrace.bucket_floor(n.start_time, '00:05:00') AS bucket,
               n.model COLLATE "C" AS model, coalesce(n.operation, '') COLLATE "C" AS operation,
               tokentrace.mpt_bin(n.ms_per_token) AS bin, count(*) AS n
        FROM new_spans n
        WHERE n.model IS NOT NULL AND n.ms_per_token IS NOT NULL
        GROUP BY 1, 2, 3, 4
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
               min(f.first_start) AS first_start, max(f.last_start) AS last_start
        FROM f CROSS JOIN g
        GROUP BY 1, 2, 3, 4
    ), h AS (
        SELECT x.grain, x.bucket, x.model, x.operation,
               array_agg(x.bin ORDER BY x.bin) AS bins, array_agg(x.n ORDER BY x.bin) AS counts
        FROM (SELECT g.grain, tokentrace.bucket_floor(fb.bucket, g.grain) AS bucket, fb.model,
                     fb.operation, fb.bin, sum(fb.n)::bigint AS n
              FROM fb CROSS JOIN g
              GROUP BY 1, 2, 3, 4, 5) x
        GROUP BY 1, 2, 3, 4
    )
    SELECT t.grain, t.bucket, t.model, t.operation, t.spans, t.errors, t.input_tokens,
           t.output_tokens, t.timed_calls, t.timed_inference_ms, t.timed_output_tokens,
           t.decode_ms_tokens, t.decode_output_tokens, t.load_ms_n, t.load_ms_sum,
           t.first_start, t.last_start, coalesce(h.bins, '{}'), coalesce(h.counts, '{}')
    FROM t LEFT JOIN h
      ON h.grain = t.grain AND h.bucket = t.bucket AND h.model = t.model AND h.operation = t.operation
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
        (mpt_bins, mpt_counts) = (SELECT m.bins, m.counts FROM tokentrace.mpt_merge(
                                      r.mpt_bins, r.mpt_counts, excluded.mpt_bins, excluded.mpt_counts) m);
    RETURN NULL;
END
$$;

CREATE TRIGGER spans_rollup AFTER INSERT ON tokentrace.spans
    REFERENCING NEW TABLE AS new_spans
    FOR EACH STATEMENT EXECUTE FUNCTION tokentrace.rollup_new_spans();

-- Recomputes the rollups of the whole UTC days overlapping [range_start, range_end)
-- from raw spans (after a manual DELETE of spans, say). Refuses days before the raw
-- horizon: their raw spans are gone and their rollups are all that is left.
-- Returns the rollup rows written. Writers wait while it runs (SHARE lock).
CREATE FUNCTION tokentrace.rebuild_rollups(range_start timestamptz, range_end timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    day_start timestamptz := tokentrace.bucket_floor(range_start, '24:00:00');
    day_end   timestamptz := tokentrace.bucket_ceil(range_end, '24:00:00');
    written   bigint;
BEGIN
    IF day_start < tokentrace.raw_horizon() THEN
        RAISE EXCEPTION 'raw spans before % were pruned; rebuilding from % would lose their rollups',
            tokentrace.raw_horizon(), day_start;
    END IF;
    LOCK TABLE tokentrace.spans IN SHARE MODE;
    DELETE FROM tokentrace.span_rollups r WHERE r.bucket >= day_start AND r.bucket < day_end;
    INSERT INTO tokentrace.span_rollups
    SELECT g.grain, s.*
    FROM (VALUES (interval '00:05:00'), (interval '01:00:00'), (interval '24:00:00')) g(grain)
    CROSS JOIN LATERAL tokentrace.span_summary(day_start, day_end, g.grain) s;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$$;

-- Spans stored before this migration: rolled up once, here. The trigger's lock
-- (taken above, held to commit) keeps writers out until then, so none is missed.
SELECT tokentrace.rebuild_rollups('-infinity', 'infinity');

-- --- reading a window -------------------------------------------------------------------
-- Which sources answer [range_start, range_end): whole days, then whole hours at both
-- ends, then whole 5-minute buckets, then raw spans for what is left. Raw spans and
-- 5-minute rollups are only used after the raw horizon; before it the window
-- resolves to whole hours (no span outside the window is ever counted).
CREATE FUNCTION tokentrace.window_plan(range_start timestamptz, range_end timestamptz)
RETURNS TABLE (source text, grain interval, piece_start timestamptz, piece_end timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    horizon timestamptz := tokentrace.raw_horizon();
    g       interval;
    t1      timestamptz;
    t2      timestamptz;
    c1      timestamptz;  -- [c1, c2): covered by coarser grains so far (NULL: nothing)
    c2      timestamptz;
    floor_  timestamptz;
BEGIN
    IF range_start IS NULL OR range_end IS NULL OR range_start >= range_end THEN
        RETURN;
    END IF;
    FOREACH g IN ARRAY ARRAY['24:00:00', '01:00:00', '00:05:00']::interval[] LOOP
        t1 := tokentrace.bucket_ceil(range_start, g);
        t2 := tokentrace.bucket_floor(range_end, g);
        CONTINUE WHEN t1 >= t2;
        floor_ := CASE WHEN g = '00:05:00' THEN horizon ELSE '-infinity' END;
        IF c1 IS NULL THEN
            source := 'rollup'; grain := g; piece_start := greatest(t1, floor_); piece_end := t2;
            IF piece_start < piece_end THEN RETURN NEXT; END IF;
        ELSE
            source := 'rollup'; grain := g; piece_start := greatest(t1, floor_); piece_end := c1;
            IF piece_start < piece_end THEN RETURN NEXT; END IF;
            piece_start := greatest(c2, floor_); piece_end := t2;
            IF piece_start < piece_end THEN RETURN NEXT; END IF;
        END IF;
        c1 := t1;
        c2 := t2;
    END LOOP;
    source := 'raw'; grain := NULL;
    IF c1 IS NULL THEN
        piece_start := greatest(range_start, horizon); piece_end := range_end;
        IF piece_start < piece_end THEN RETURN NEXT; END IF;
    ELSE
        piece_start := greatest(range_start, horizon); piece_end := c1;
        IF piece_start < piece_end THEN RETURN NEXT; END IF;
        piece_start := greatest(c2, horizon); piece_end := range_end;
        IF piece_start < piece_end THEN RETURN NEXT; END IF;
    END IF;
END
$$;

-- The rows that make up [range_start, range_end): rollup rows of the whole buckets
-- and raw-span summaries of the edges, one row per piece, bucket, model and
-- operation (NULL when the spans named none). Sum them for any report. With
-- histograms = false, mpt_bins and mpt_counts are NULL and cost nothing.
CREATE FUNCTION tokentrace.window_parts(
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
        ELSIF NOT histograms THEN
            -- Without the histogram columns the planner drops span_summary()'s binning.
            RETURN QUERY
            SELECT 'raw'::text, NULL::interval, s.bucket, s.model, nullif(s.operation, ''), s.spans,
                   s.errors, s.input_tokens, s.output_tokens, s.timed_calls, s.timed_inference_ms,
                   s.timed_output_tokens, s.decode_ms_tokens, s.decode_output_tokens, s.load_ms_n,
                   s.load_ms_sum, s.first_start, s.last_start, NULL::smallint[], NULL::bigint[]
            FROM tokentrace.span_summary(p.piece_start, p.piece_end, NULL, model_filter) s;
        ELSE
            RETURN QUERY
            SELECT 'raw'::text, NULL::interval, s.bucket, s.model, nullif(s.operation, ''), s.spans,
                   s.errors, s.input_tokens, s.output_tokens, s.timed_calls, s.timed_inference_ms,
                   s.timed_output_tokens, s.decode_ms_tokens, s.decode_output_tokens, s.load_ms_n,
                   s.load_ms_sum, s.first_start, s.last_start, s.mpt_bins, s.mpt_counts
            FROM tokentrace.span_summary(p.piece_start, p.piece_end, NULL, model_filter) s;
        END IF;
    END LOOP;
END
$$;

-- --- the reports ------------------------------------------------------------------------
-- efficiency() over any [range_start, range_end), with 0002's definitions: calls are
-- spans whose operation is set and is not load_model, loads are load_model spans
-- (a span naming no operation is neither, though its errors count).
CREATE FUNCTION tokentrace.efficiency_range(
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
LANGUAGE sql STABLE AS $$
    WITH p AS MATERIALIZED (
        SELECT w.*, w.operation <> 'load_model' AS is_call  -- NULL when no operation
        FROM tokentrace.window_parts(range_start, range_end, model_filter) w
    ), t AS (
        SELECT p.model,
               coalesce(sum(p.spans) FILTER (WHERE p.is_call), 0)::bigint AS calls,
               coalesce(sum(p.input_tokens) FILTER (WHERE p.is_call), 0)::bigint AS input_tokens,
               coalesce(sum(p.output_tokens) FILTER (WHERE p.is_call), 0)::bigint AS output_tokens,
               sum(p.timed_inference_ms) FILTER (WHERE p.is_call)
                 / nullif(sum(p.timed_output_tokens) FILTER (WHERE p.is_call), 0)::float8 AS weighted,
               sum(p.decode_ms_tokens) FILTER (WHERE p.is_call)
                 / nullif(sum(p.decode_output_tokens) FILTER (WHERE p.is_call), 0)::float8 AS decode,
               coalesce(sum(p.spans) FILTER (WHERE NOT p.is_call), 0)::bigint AS loads,
               sum(p.load_ms_sum) FILTER (WHERE NOT p.is_call)
                 / nullif(sum(p.load_ms_n) FILTER (WHERE NOT p.is_call), 0)::float8 AS avg_load_ms,
               coalesce(sum(p.errors), 0)::bigint AS errors
        FROM p
        GROUP BY p.model
    ), h AS (
        -- unnest() in the select list (not in FROM): no per-row function scan.
        SELECT u.model, u.bin, sum(u.n)::bigint AS n
        FROM (SELECT p.model, unnest(p.mpt_bins) AS bin, unnest(p.mpt_counts) AS n
              FROM p WHERE p.is_call) u
        GROUP BY u.model, u.bin
    ), q AS (
        SELECT h.model, array_agg(h.bin ORDER BY h.bin) AS bins, array_agg(h.n ORDER BY h.bin) AS counts
        FROM h
        GROUP BY h.model
    )
    SELECT t.model, t.calls, t.input_tokens, t.output_tokens, t.weighted,
           tokentrace.mpt_quantile(q.bins, q.counts, 0.5),
           tokentrace.mpt_quantile(q.bins, q.counts, 0.95),
           t.decode, t.loads, t.avg_load_ms, t.errors
    FROM t LEFT JOIN q ON q.model = t.model
    ORDER BY 5 NULLS LAST, 1
$$;

COMMENT ON FUNCTION tokentrace.efficiency_range(timestamptz, timestamptz, text) IS
    'efficiency() over [range_start, range_end): from rollups, raw spans only at the partial edges.';

CREATE OR REPLACE FUNCTION tokentrace.efficiency(
    time_window  interval DEFAULT '24 hours',
    model_filter text     DEFAULT NULL)
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
LANGUAGE sql STABLE AS $$
    SELECT * FROM tokentrace.efficiency_range(now() - time_window, 'infinity', model_filter)
$$;

COMMENT ON FUNCTION tokentrace.efficiency(interval, text) IS
    'Per model over a window: calls, tokens, token-weighted ms/token, p50/p95 (histogram, within 2.19 %), decode ms/token, loads, errors.';

CREATE OR REPLACE VIEW tokentrace.stats_60d AS
SELECT coalesce(sum(w.spans), 0)::bigint                                   AS total_measurements,
       count(DISTINCT w.model)                                             AS unique_models,
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
WHERE w.operation IS DISTINCT FROM 'load_model'
GROUP BY w.model
ORDER BY avg_efficiency NULLS LAST, w.model;

-- --- the trend signal -------------------------------------------------------------------
-- Per model: token-weighted ms/token over the last `recent` against the `baseline`
-- before it ([now − baseline, now − recent)), and their ratio: 1.5 = 50 % slower now.
CREATE FUNCTION tokentrace.efficiency_change(
    recent   interval DEFAULT '24 hours',
    baseline interval DEFAULT '60 days')
RETURNS TABLE (
    model                 text,
    recent_ms_per_token   double precision,
    baseline_ms_per_token double precision,
    change_ratio          double precision,
    recent_calls          bigint,
    baseline_calls        bigint)
LANGUAGE sql STABLE AS $$
    WITH r AS (
        SELECT w.model,
               sum(w.timed_inference_ms) / nullif(sum(w.timed_output_tokens), 0)::float8 AS mpt,
               coalesce(sum(w.spans), 0)::bigint AS calls
        FROM tokentrace.window_parts(now() - recent, 'infinity', NULL, false) w
        WHERE w.operation IS DISTINCT FROM 'load_model'
        GROUP BY w.model
    ), b AS (
        SELECT w.model,
               sum(w.timed_inference_ms) / nullif(sum(w.timed_output_tokens), 0)::float8 AS mpt,
               coalesce(sum(w.spans), 0)::bigint AS calls
        FROM tokentrace.window_parts(now() - baseline, now() - recent, NULL, false) w
        WHERE w.operation IS DISTINCT FROM 'load_model'
        GROUP BY w.model
    )
    SELECT coalesce(r.model, b.model), r.mpt, b.mpt, r.mpt / nullif(b.mpt, 0),
           coalesce(r.calls, 0), coalesce(b.calls, 0)
    FROM r FULL JOIN b ON b.model = r.model
    ORDER BY 4 DESC NULLS LAST, 1
$$;

CREATE VIEW tokentrace.efficiency_change AS
SELECT * FROM tokentrace.efficiency_change('24 hours', '60 days');

-- --- retention --------------------------------------------------------------------------
-- prune() drops raw day partitions wholly before now() − retention (with the
-- 5-minute rollups of those days) and rollups before now() − rollup_retention (NULL:
-- tokentrace.rollup_retention_days()). One row per UTC day affected: kind 'raw'
-- (partition_name, its spans, the 5-minute rollup rows deleted) or 'rollup' (hourly
-- and daily rollup rows deleted, spans = the spans they summed).
DROP FUNCTION tokentrace.prune(interval);

CREATE FUNCTION tokentrace.prune(
    retention        interval DEFAULT '60 days',
    rollup_retention interval DEFAULT NULL)
RETURNS TABLE (partition_name text, day date, spans bigint, rollup_rows bigint, kind text)
LANGUAGE plpgsql AS $$
DECLARE
    p             record;
    cutoff        timestamptz := now() - retention;
    keep_rollups  interval := coalesce(rollup_retention,
                                       make_interval(days => tokentrace.rollup_retention_days()));
    horizon       timestamptz;
    rollup_cutoff timestamptz;
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

    -- Partitions first: DROP waits for writers, and holds them off while we go on.
    FOR p IN
        SELECT sp.partition, sp.partition_name, sp.day FROM tokentrace.span_partitions sp
        WHERE ((sp.day + 1)::timestamp AT TIME ZONE 'UTC') <= cutoff
        ORDER BY sp.day
    LOOP
        partition_name := p.partition_name;
        day := p.day;
        kind := 'raw';
        EXECUTE format('SELECT count(*) FROM %s', p.partition) INTO spans;
        EXECUTE format('DROP TABLE %s', p.partition);
        DELETE FROM tokentrace.span_rollups r
        WHERE r.grain = '00:05:00'
          AND r.bucket >= (p.day::timestamp AT TIME ZONE 'UTC')
          AND r.bucket < ((p.day + 1)::timestamp AT TIME ZONE 'UTC');
        GET DIAGNOSTICS rollup_rows = ROW_COUNT;
        RETURN NEXT;
    END LOOP;

    -- 5-minute rollups of expired days that had no partition left.
    RETURN QUERY
    WITH gone AS (
        DELETE FROM tokentrace.span_rollups r
        WHERE r.grain = '00:05:00' AND r.bucket < horizon
        RETURNING r.bucket
    )
    SELECT NULL::text, (g.bucket AT TIME ZONE 'UTC')::date, 0::bigint, count(*), 'raw'::text
    FROM gone g GROUP BY 2 ORDER BY 2;

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

-- --- footprint ----------------------------------------------------------------------------
-- The oldest and newest span, read from the first and last non-empty day partition
-- (one index probe each) rather than planned across every partition.
CREATE FUNCTION tokentrace.span_time_bounds(OUT oldest timestamptz, OUT newest timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT sp.partition FROM tokentrace.span_partitions sp ORDER BY sp.day LOOP
        EXECUTE format('SELECT min(start_time) FROM %s', p.partition) INTO oldest;
        EXIT WHEN oldest IS NOT NULL;
    END LOOP;
    FOR p IN SELECT sp.partition FROM tokentrace.span_partitions sp ORDER BY sp.day DESC LOOP
        EXECUTE format('SELECT max(start_time) FROM %s', p.partition) INTO newest;
        EXIT WHEN newest IS NOT NULL;
    END LOOP;
END
$$;

-- Growth per relation. spans: the size of the day partitions of the last 7 UTC days
-- and today, over the time they cover (less when the oldest span is younger);
-- projected = that × the raw retention. span_rollups: each grain's size over the days
-- it covers; projected = the 5-minute tier × the raw retention + the hourly and daily
-- tiers × the rollup retention (never less than today's size).
CREATE FUNCTION tokentrace.relation_growth(oldest_span timestamptz)
RETURNS TABLE (relation text, bytes_per_day double precision, projected_bytes bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    today     date := (now() AT TIME ZONE 'UTC')::date;
    since     timestamptz := ((today - 7)::timestamp AT TIME ZONE 'UTC');
    raw_keep  integer := tokentrace.retention_days();
    roll_keep integer := tokentrace.rollup_retention_days();
    recent    bigint;
    days      double precision;
    tier      record;
    first_at  timestamptz;
    roll_bpd  double precision := 0;
    roll_proj double precision := 0;
    roll_size bigint := 0;
BEGIN
    SELECT coalesce(sum(pg_total_relation_size(p.partition)), 0) INTO recent
    FROM tokentrace.span_partitions p WHERE p.day >= today - 7 AND p.day <= today;
    days := greatest(extract(epoch FROM now() - greatest(since, coalesce(oldest_span, now()))) / 86400.0,
                     1.0 / 24);
    relation := 'spans';
    bytes_per_day := CASE WHEN oldest_span IS NULL THEN 0 ELSE recent / days END;
    projected_bytes := (bytes_per_day * raw_keep)::bigint;
    RETURN NEXT;

    FOR tier IN
        SELECT t.grain, t.rel, pg_total_relation_size(t.rel) AS size
        FROM (VALUES (interval '00:05:00', 'tokentrace.span_rollups_5min'::regclass),
                     (interval '01:00:00', 'tokentrace.span_rollups_hour'::regclass),
                     (interval '24:00:00', 'tokentrace.span_rollups_day'::regclass)) t(grain, rel)
    LOOP
        roll_size := roll_size + tier.size;
        SELECT min(r.bucket) INTO first_at FROM tokentrace.span_rollups r WHERE r.grain = tier.grain;
        CONTINUE WHEN first_at IS NULL;
        days := greatest(extract(epoch FROM now() - first_at) / 86400.0, 1.0);
        roll_bpd := roll_bpd + tier.size / days;
        roll_proj := roll_proj + tier.size / days
                     * CASE WHEN tier.grain = '00:05:00' THEN raw_keep ELSE roll_keep END;
    END LOOP;
    relation := 'span_rollups';
    bytes_per_day := roll_bpd;
    projected_bytes := greatest(roll_proj::bigint, roll_size);
    RETURN NEXT;
END
$$;

CREATE OR REPLACE VIEW tokentrace.footprint AS
WITH b AS MATERIALIZED (SELECT * FROM tokentrace.span_time_bounds()),
growth AS MATERIALIZED (SELECT g.* FROM b, tokentrace.relation_growth(b.oldest) g)
SELECT c.relname::text                         AS relation,
       t.total_bytes,
       pg_size_pretty(t.total_bytes)           AS total_size,
       t.row_estimate,
       (SELECT b.oldest FROM b)                AS oldest_span,
       (SELECT b.newest FROM b)                AS newest_span,
       coalesce(g.bytes_per_day, 0)::float8    AS bytes_per_day,
       coalesce(g.projected_bytes, t.total_bytes) AS projected_bytes
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'tokentrace'
CROSS JOIN LATERAL (
    SELECT coalesce(sum(pg_total_relation_size(pt.relid)), 0)::bigint AS total_bytes,
           coalesce(sum(greatest(pc.reltuples::bigint, coalesce(st.n_live_tup, 0))), 0)::bigint
                                                                    AS row_estimate
    FROM (SELECT c.oid AS relid WHERE c.relkind = 'r'
          UNION ALL
          SELECT pt.relid FROM pg_partition_tree(c.oid) pt WHERE c.relkind = 'p' AND pt.isleaf) pt
    JOIN pg_class pc ON pc.oid = pt.relid
    LEFT JOIN pg_stat_user_tables st ON st.relid = pt.relid
) t
LEFT JOIN growth g ON g.relation = c.relname::text
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY t.total_bytes DESC, relation;

-- One row: the whole tokentrace footprint, its growth, the size it settles at
-- under the retention windows, and the days until `cap_bytes` is reached (NULL: no
-- cap, or the projected size fits under it).
CREATE FUNCTION tokentrace.footprint_summary(cap_bytes bigint DEFAULT NULL)
RETURNS TABLE (
    total_bytes           bigint,
    oldest_span           timestamptz,
    newest_span           timestamptz,
    spans_per_day         double precision,
    bytes_per_day         double precision,
    retention_days        integer,
    rollup_retention_days integer,
    projected_bytes       bigint,
    disk_cap_bytes        bigint,
    fits_within_cap       boolean,
    days_until_cap        double precision)
LANGUAGE sql STABLE AS $$
    WITH f AS (SELECT * FROM tokentrace.footprint),
    s AS (
        SELECT sum(f.total_bytes)::bigint AS total, sum(f.bytes_per_day) AS bpd,
               sum(f.projected_bytes)::bigint AS projected,
               min(f.oldest_span) AS oldest, max(f.newest_span) AS newest,
               max(f.row_estimate) FILTER (WHERE f.relation = 'spans') AS span_rows
        FROM f
    ), recent AS (
        -- Spans per day from the same 7-day day partitions, by catalog estimate.
        SELECT coalesce(sum(greatest(pc.reltuples::bigint, coalesce(st.n_live_tup, 0))), 0) AS n
        FROM tokentrace.span_partitions p
        JOIN pg_class pc ON pc.oid = p.partition
        LEFT JOIN pg_stat_user_tables st ON st.relid = p.partition
        WHERE p.day >= (now() AT TIME ZONE 'UTC')::date - 7 AND p.day <= (now() AT TIME ZONE 'UTC')::date
    )
    SELECT s.total, s.oldest, s.newest,
           CASE WHEN s.oldest IS NULL THEN 0::float8 ELSE recent.n / greatest(
               extract(epoch FROM now() - greatest(
                   (((now() AT TIME ZONE 'UTC')::date - 7)::timestamp AT TIME ZONE 'UTC'), s.oldest))
               / 86400.0, 1.0 / 24) END,
           s.bpd, tokentrace.retention_days(), tokentrace.rollup_retention_days(), s.projected,
           cap_bytes,
           CASE WHEN cap_bytes IS NULL THEN NULL ELSE s.projected <= cap_bytes END,
           CASE WHEN cap_bytes IS NULL OR s.projected <= cap_bytes THEN NULL
                WHEN s.total >= cap_bytes THEN 0::float8
                WHEN s.bpd <= 0 THEN NULL
                ELSE (cap_bytes - s.total) / s.bpd END
    FROM s, recent
$$;
