-- tokentrace schema: ms/token histograms as one number per rollup row, so a window's
-- histogram is a sum, not a merge.
--
-- Why: a 24-hour efficiency window reads ~200–400 rollup rows whose histograms held
-- ~5,000–7,000 (bin, count) array entries together; unnesting and grouping them took
-- most of what efficiency_24h cost at 10 M spans (~4 of ~6–8 ms). A histogram is now
-- packed into a numeric: 12 decimal digits per bin, bin b's count times 10^(12·b),
-- so adding two packed histograms adds their counts bin by bin, exactly, in one
-- numeric addition done in C. A window's histogram is `sum(weight · mpt_packed)`
-- over its pieces, unpacked once per model to find p50 and p95.
--
-- The bins are 0003's (16 per doubling, within 2.19 %). A numeric holds at most
-- 131,072 digits before its decimal point and 16,383 after it, so bins are kept to
-- [-1365, 10922]: ms/token from 2^-85.3 (2.6·10^-26 ms) up to 2^682.6; a value
-- below that range is counted as 0 (as zero always was), one above it as +Infinity.
-- The digits hold a count below 10^12 per bin and window. The trigger adds packed
-- histograms on conflict with `+`, which is also cheaper than 0003's array merge.
--
-- Also: efficiency_range() reads the raw edges of a window as rows
-- (span_values(), one plain statement on the day's partition) and sums them with
-- the rollup rows in one query, instead of span_summary()'s grouped statement that
-- was planned on every call; and it finds p50/p95 with window sums instead of
-- building arrays and looping over them.

-- --- packing --------------------------------------------------------------------------------
-- 10^(12·b) for a bin, with the bins beyond the packable range at its ends (zero's bin
-- −32768 at the low end, +Infinity's 32767 at the high end).
CREATE FUNCTION tokentrace.mpt_unit(bin smallint) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('1e' || (12 * CASE WHEN bin <= -1365 THEN -1365
                               WHEN bin >= 10922 THEN 10922
                               ELSE bin END))::numeric
$$;

CREATE FUNCTION tokentrace.mpt_pack(bins smallint[], counts bigint[]) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(sum(u.n * tokentrace.mpt_unit(u.bin)), 0)
    FROM unnest(bins, counts) AS u(bin, n)
$$;

-- The bins of a packed histogram, one row each (with count 0 for the empty bins
-- between its lowest and highest), read from its decimal digits: the integer part
-- holds bins 0 and up (bin b in the 12 digits ending 12·b from the right), the
-- fraction bins −1 and down. Subqueries with OFFSET 0 so the text is made once per
-- call, not once per bin.
CREATE FUNCTION tokentrace.mpt_digits(packed numeric) RETURNS TABLE (bin smallint, n bigint)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE g.pos WHEN -1365 THEN -32768 WHEN 10922 THEN 32767 ELSE g.pos END::smallint,
           encode(CASE WHEN g.pos >= 0 THEN substr(d.ip, length(d.ip) - 12 * g.pos - 11, 12)
                       ELSE substr(d.fp, -12 * g.pos - 11, 12) END, 'escape')::bigint
    FROM (SELECT convert_to(lpad(t.ip, 12 * ((length(t.ip) + 11) / 12), '0'), 'UTF8') AS ip,
                 convert_to(rpad(t.fp, 12 * ((length(t.fp) + 11) / 12), '0'), 'UTF8') AS fp
          FROM (SELECT split_part(s.t, '.', 1) AS ip, split_part(s.t, '.', 2) AS fp
                FROM (SELECT trim_scale(packed)::text AS t WHERE packed > 0 OFFSET 0) s
                OFFSET 0) t
          OFFSET 0) d
    CROSS JOIN LATERAL generate_series(-(length(d.fp) / 12), length(d.ip) / 12 - 1) AS g(pos)
$$;

-- 0003's two arrays (bins ascending, counts alongside) of a packed histogram.
CREATE FUNCTION tokentrace.mpt_unpack(packed numeric, OUT bins smallint[], OUT counts bigint[])
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(d.bin ORDER BY d.bin), '{}'), coalesce(array_agg(d.n ORDER BY d.bin), '{}')
    FROM tokentrace.mpt_digits(packed) d
    WHERE d.n <> 0
$$;

-- --- the rollup table ----------------------------------------------------------------------
-- The arrays become one packed column. Writers wait (the ALTER TABLE holds
-- span_rollups) while the rows already there are converted.
ALTER TABLE tokentrace.span_rollups ADD COLUMN mpt_packed numeric NOT NULL DEFAULT 0;
UPDATE tokentrace.span_rollups r SET mpt_packed = tokentrace.mpt_pack(r.mpt_bins, r.mpt_counts)
WHERE cardinality(r.mpt_bins) > 0;
ALTER TABLE tokentrace.span_rollups DROP COLUMN mpt_bins, DROP COLUMN mpt_counts;

-- As in 0003, with the histogram packed: one 10^(12·bin) per (bucket, model,
-- operation, bin) group of the new rows, summed per rollup key, added on conflict.
CREATE OR REPLACE FUNCTION tokentrace.rollup_new_spans() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tokentrace.span_rollups AS r (
        grain, bucket, model, operation, spans, errors, input_tokens, output_tokens,
        timed_calls, timed_inference_ms, timed_output_tokens, decode_ms_tokens,
        decode_output_tokens, load_ms_n, load_ms_sum, first_start, last_start, mpt_packed)
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
        SELECT b.bucket, b.model, b.operation, b.n * tokentrace.mpt_unit(b.bin) AS packed
        FROM (SELECT tokentrace.bucket_floor(n.start_time, '00:05:00') AS bucket,
                     n.model COLLATE "C" AS model, coalesce(n.operation, '') COLLATE "C" AS operation,
                     tokentrace.mpt_bin(n.ms_per_token) AS bin, count(*) AS n
              FROM new_spans n
              WHERE n.model IS NOT NULL AND n.ms_per_token IS NOT NULL
              GROUP BY 1, 2, 3, 4) b
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
        SELECT g.grain, tokentrace.bucket_floor(fb.bucket, g.grain) AS bucket, fb.model,
               fb.operation, sum(fb.packed) AS packed
        FROM fb CROSS JOIN g
        GROUP BY 1, 2, 3, 4
    )
    SELECT t.grain, t.bucket, t.model, t.operation, t.spans, t.errors, t.input_tokens,
           t.output_tokens, t.timed_calls, t.timed_inference_ms, t.timed_output_tokens,
           t.decode_ms_tokens, t.decode_output_tokens, t.load_ms_n, t.load_ms_sum,
           t.first_start, t.last_start, coalesce(h.packed, 0)
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
        mpt_packed           = r.mpt_packed + excluded.mpt_packed;
    RETURN NULL;
END
$$;

-- As in 0003, the rows written with their histogram packed.
CREATE OR REPLACE FUNCTION tokentrace.rebuild_rollups(range_start timestamptz, range_end timestamptz)
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
    INSERT INTO tokentrace.span_rollups (
        grain, bucket, model, operation, spans, errors, input_tokens, output_tokens,
        timed_calls, timed_inference_ms, timed_output_tokens, decode_ms_tokens,
        decode_output_tokens, load_ms_n, load_ms_sum, first_start, last_start, mpt_packed)
    SELECT g.grain, s.bucket, s.model, s.operation, s.spans, s.errors, s.input_tokens,
           s.output_tokens, s.timed_calls, s.timed_inference_ms, s.timed_output_tokens,
           s.decode_ms_tokens, s.decode_output_tokens, s.load_ms_n, s.load_ms_sum,
           s.first_start, s.last_start, tokentrace.mpt_pack(s.mpt_bins, s.mpt_counts)
    FROM (VALUES (interval '00:05:00'), (interval '01:00:00'), (interval '24:00:00')) g(grain)
    CROSS JOIN LATERAL tokentrace.span_summary(day_start, day_end, g.grain) s;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$$;

-- As in 0040; a rollup row's histogram is unpacked into 0003's two arrays.
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
                   r.load_ms_sum, r.first_start, r.last_start, u.bins, u.counts
            FROM tokentrace.span_rollups r
            LEFT JOIN LATERAL tokentrace.mpt_unpack(r.mpt_packed) u ON histograms
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

-- --- raw spans of a window's edge, as rows ------------------------------------------------
-- The columns the reports sum, one row per span with a model in [range_start,
-- range_end). As span_summary(): a range within one UTC day is read from that day's
-- partition by name, after taking the lock a read of tokentrace.spans would take.
-- The statement is a plain filtered read, cheap to plan on every call.
CREATE FUNCTION tokentrace.span_values(
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
          AND ($3::text IS NULL OR sp.model = $3::text)
    $q$, source) USING range_start, range_end, model_filter;
END
$fn$;

COMMENT ON FUNCTION tokentrace.span_values(timestamptz, timestamptz, text) IS
    'Per span with a model in [range_start, range_end): the columns the reports sum (tokentrace).';

-- --- efficiency over a window ------------------------------------------------------------
-- Same definitions, columns and pieces (window_plan(…, true)) as 0050. Rollup rows
-- and raw spans are summed in one pass (a raw span counts as a row of one); the
-- histogram is sum(weight · mpt_packed) per model, plus 10^(12·bin) per raw span,
-- unpacked once; p50/p95 interpolate between the bins holding ranks ⌊q(n−1)⌋ and
-- ⌊q(n−1)⌋ + 1 exactly as mpt_quantile() does.
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
LANGUAGE plpgsql STABLE AS $$
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
            SELECT r.model, r.operation, r.spans, r.errors, r.input_tokens, r.output_tokens,
                   r.timed_inference_ms, r.timed_output_tokens, r.decode_ms_tokens,
                   r.decode_output_tokens, r.load_ms_n, r.load_ms_sum, r.mpt_packed
            FROM tokentrace.span_rollups r
            WHERE r.grain = pl.grain AND r.bucket >= pl.piece_start AND r.bucket < pl.piece_end
              AND (model_filter IS NULL OR r.model = model_filter)
            OFFSET 0) r
        WHERE pl.source = 'rollup'
    ), s AS (
        SELECT ro.w, ro.model, ro.operation NOT IN ('', 'load_model') AS is_call,
               ro.operation = 'load_model' AS is_load, ro.spans, ro.errors, ro.input_tokens,
               ro.output_tokens, ro.timed_inference_ms, ro.timed_output_tokens, ro.decode_ms_tokens,
               ro.decode_output_tokens, ro.load_ms_n, ro.load_ms_sum
        FROM roll ro
        UNION ALL
        SELECT rw.w, rw.model, rw.operation NOT IN ('', 'load_model'), rw.operation = 'load_model',
               1, (rw.status = 'ERROR')::integer,
               coalesce(rw.input_tokens, 0), coalesce(rw.output_tokens, 0),
               CASE WHEN rw.ms_per_token IS NOT NULL THEN rw.inference_ms END,
               CASE WHEN rw.ms_per_token IS NOT NULL THEN coalesce(rw.output_tokens, 0) ELSE 0 END,
               CASE WHEN rw.decode_ms_per_token IS NOT NULL THEN rw.decode_ms_per_token * rw.output_tokens END,
               CASE WHEN rw.decode_ms_per_token IS NOT NULL THEN coalesce(rw.output_tokens, 0) ELSE 0 END,
               CASE WHEN rw.operation = 'load_model' AND coalesce(rw.load_ms, rw.duration_ms) IS NOT NULL
                    THEN 1 ELSE 0 END,
               CASE WHEN rw.operation = 'load_model' THEN coalesce(rw.load_ms, rw.duration_ms) END
        FROM raw rw
    ), t AS (
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
               coalesce(sum(s.w * s.errors), 0)::bigint AS errors
        FROM s
        GROUP BY s.model
        HAVING sum(s.w * s.spans) <> 0
    ), hp AS MATERIALIZED (
        SELECT u.model, sum(u.packed) AS packed
        FROM (SELECT ro.model, ro.w * ro.mpt_packed AS packed
              FROM roll ro WHERE ro.operation NOT IN ('', 'load_model')
              UNION ALL
              SELECT rw.model, rw.w * tokentrace.mpt_unit(tokentrace.mpt_bin(rw.ms_per_token))
              FROM raw rw
              WHERE rw.ms_per_token IS NOT NULL AND rw.operation NOT IN ('', 'load_model')) u
        GROUP BY u.model
    ), ht AS MATERIALIZED (
        -- mpt_digits(), inlined: the packed sum as text once per model, then 12 bytes per bin
        SELECT hp.model, convert_to(lpad(d.ip, 12 * ((length(d.ip) + 11) / 12), '0'), 'UTF8') AS ip,
               convert_to(rpad(d.fp, 12 * ((length(d.fp) + 11) / 12), '0'), 'UTF8') AS fp
        FROM hp CROSS JOIN LATERAL (
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
        SELECT h.model, h.bin, sum(h.n) OVER (PARTITION BY h.model ORDER BY h.bin) AS cum,
               sum(h.n) OVER (PARTITION BY h.model) AS total
        FROM h
        WHERE h.n <> 0
    ), q AS (
        SELECT c.model, k.r50, k.r95,
               min(c.bin) FILTER (WHERE c.cum > k.k50) AS lo50,
               min(c.bin) FILTER (WHERE c.cum > k.k50 + 1) AS hi50,
               min(c.bin) FILTER (WHERE c.cum > k.k95) AS lo95,
               min(c.bin) FILTER (WHERE c.cum > k.k95 + 1) AS hi95
        FROM c CROSS JOIN LATERAL (
            SELECT 0.5::float8 * (c.total - 1)::float8 AS r50,
                   0.95::float8 * (c.total - 1)::float8 AS r95,
                   floor(0.5::float8 * (c.total - 1)::float8)::bigint AS k50,
                   floor(0.95::float8 * (c.total - 1)::float8)::bigint AS k95) k
        GROUP BY c.model, k.r50, k.r95, k.k50, k.k95
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

-- --- reader access (0030) ------------------------------------------------------------------
-- span_values() reads spans for a report: it joins the report functions.
CREATE OR REPLACE FUNCTION tokentrace.report_function_names() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[
        'retention_days', 'rollup_retention_days', 'raw_horizon',
        'span_summary', 'span_values', 'window_plan', 'window_parts',
        'efficiency', 'efficiency_range', 'efficiency_change',
        'efficiency_series', 'efficiency_series_range',
        'span_time_bounds', 'relation_growth', 'footprint_summary'
    ]::text[]
$$;

REVOKE EXECUTE ON FUNCTION tokentrace.rebuild_rollups(timestamptz, timestamptz) FROM PUBLIC;
SELECT tokentrace.secure_report_functions();
