-- tokentrace schema: efficiency_series_range() (the dashboard's charts and table) from
-- rollups, whenever its buckets line up with them.
--
-- Why: the series read raw spans. At 10 M spans the dashboard took 25–60 s per page
-- (the 60-day view 29 s for its daily series alone), and the page redraws every 30 s.
-- The series' figures are sums, like efficiency()'s, so whole rollup rows serve them;
-- what the rollups lacked were the sums behind prefill ms/token, time spent loading
-- inside calls and time spent inferring. They carry them now:
--
--   prefill_ms_tokens     sum(prefill_ms_per_token · input_tokens) over the spans
--                         that have a prefill figure (NULL: none yet)
--   prefill_input_tokens  their input_tokens, summed
--   inference_ms_total    inference_ms over every span of the row, summed
--   load_ms_total         load_ms (a load reported inside the span) over every span
--
-- Upgrading fills them from the raw spans still stored (fill_rollup_totals()); rows
-- whose spans are already pruned keep NULL there, "not known", and a series bucket
-- that includes one reports its prefill, load and inference time as NULL rather than
-- a partial sum. The other figures of those buckets are known and reported.
--
-- efficiency_series_range(start, end, bucket) reads rollup rows when a grain
-- (1 day, 1 hour, 5 minutes; the coarsest that fits) divides the bucket and `start`
-- lies on that grain's boundaries, and so does `end` unless it is 'infinity' (as the
-- dashboard asks): then every bucket is whole rollup rows.
-- Five-minute rows serve only from the raw horizon on (prune() removes them with the
-- raw spans). Otherwise it reads raw spans as before: efficiency_series_raw(), 0020's
-- function renamed. From rollups, p50/p95 come from the histograms, within 2.19 %
-- like efficiency()'s; everything else equals the raw figures.

-- --- the rollup table ----------------------------------------------------------------------
ALTER TABLE tokentrace.span_rollups
    ADD COLUMN prefill_ms_tokens    double precision,
    ADD COLUMN prefill_input_tokens bigint,
    ADD COLUMN inference_ms_total   double precision,
    ADD COLUMN load_ms_total        double precision;

-- As in 0060, with the four sums, and in one pass over the new spans: they are grouped
-- once by bucket, model, operation and ms/token bin, and the rollup rows summed from
-- those groups (0060 grouped them twice, once without and once with the bin). With
-- the four sums added, the trigger costs less backend CPU per span than 0060's did
-- (measured side by side: 1.2–1.4 against 2.0–2.7 µs in 8,192-span batches, 6.1–6.5
-- against 8.5–9.2 µs in 512-span batches).
CREATE OR REPLACE FUNCTION tokentrace.rollup_new_spans() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tokentrace.span_rollups AS r (
        grain, bucket, model, operation, spans, errors, input_tokens, output_tokens,
        timed_calls, timed_inference_ms, timed_output_tokens, decode_ms_tokens,
        decode_output_tokens, load_ms_n, load_ms_sum, first_start, last_start, mpt_packed,
        prefill_ms_tokens, prefill_input_tokens, inference_ms_total, load_ms_total)
    WITH sb AS (
        SELECT tokentrace.bucket_floor(n.start_time, '00:05:00') AS bucket,
               n.model COLLATE "C" AS model, coalesce(n.operation, '') COLLATE "C" AS operation,
               tokentrace.mpt_bin(n.ms_per_token) AS bin,
               count(*) AS spans,
               count(*) FILTER (WHERE n.status = 'ERROR') AS errors,
               sum(n.input_tokens) AS input_tokens,
               sum(n.output_tokens) AS output_tokens,
               sum(n.inference_ms) FILTER (WHERE n.ms_per_token IS NOT NULL) AS timed_inference_ms,
               sum(n.output_tokens) FILTER (WHERE n.ms_per_token IS NOT NULL) AS timed_output_tokens,
               sum(n.decode_ms_per_token * n.output_tokens)
                   FILTER (WHERE n.decode_ms_per_token IS NOT NULL) AS decode_ms_tokens,
               sum(n.output_tokens) FILTER (WHERE n.decode_ms_per_token IS NOT NULL) AS decode_output_tokens,
               count(coalesce(n.load_ms, n.duration_ms))
                   FILTER (WHERE n.operation = 'load_model') AS load_ms_n,
               sum(coalesce(n.load_ms, n.duration_ms))
                   FILTER (WHERE n.operation = 'load_model') AS load_ms_sum,
               min(n.start_time) AS first_start,
               max(n.start_time) AS last_start,
               sum(n.prefill_ms_per_token * n.input_tokens)
                   FILTER (WHERE n.prefill_ms_per_token IS NOT NULL) AS prefill_ms_tokens,
               sum(n.input_tokens) FILTER (WHERE n.prefill_ms_per_token IS NOT NULL) AS prefill_input_tokens,
               sum(n.inference_ms) AS inference_ms_total,
               sum(n.load_ms) AS load_ms_total
        FROM new_spans n
        WHERE n.model IS NOT NULL
        GROUP BY 1, 2, 3, 4
    ), f AS (
        SELECT sb.bucket, sb.model, sb.operation,
               sum(sb.spans) AS spans, sum(sb.errors) AS errors,
               coalesce(sum(sb.input_tokens), 0) AS input_tokens,
               coalesce(sum(sb.output_tokens), 0) AS output_tokens,
               coalesce(sum(sb.spans) FILTER (WHERE sb.bin IS NOT NULL), 0) AS timed_calls,
               sum(sb.timed_inference_ms) AS timed_inference_ms,
               coalesce(sum(sb.timed_output_tokens), 0) AS timed_output_tokens,
               sum(sb.decode_ms_tokens) AS decode_ms_tokens,
               coalesce(sum(sb.decode_output_tokens), 0) AS decode_output_tokens,
               sum(sb.load_ms_n) AS load_ms_n, sum(sb.load_ms_sum) AS load_ms_sum,
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

-- The four sums of the rollup rows of every grain whose spans lie in
-- [range_start, range_end), computed from raw spans; returns the rows updated.
-- (Upgrade and rebuild_rollups(); the trigger keeps them from then on.)
CREATE FUNCTION tokentrace.fill_rollup_totals(range_start timestamptz, range_end timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    updated bigint;
BEGIN
    WITH f AS (
        SELECT tokentrace.bucket_floor(sp.start_time, '00:05:00') AS bucket,
               sp.model COLLATE "C" AS model, coalesce(sp.operation, '') COLLATE "C" AS operation,
               sum(sp.prefill_ms_per_token * sp.input_tokens)
                   FILTER (WHERE sp.prefill_ms_per_token IS NOT NULL) AS prefill_ms_tokens,
               coalesce(sum(sp.input_tokens) FILTER (WHERE sp.prefill_ms_per_token IS NOT NULL), 0)
                   AS prefill_input_tokens,
               coalesce(sum(sp.inference_ms), 0) AS inference_ms_total,
               coalesce(sum(sp.load_ms), 0) AS load_ms_total
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

REVOKE EXECUTE ON FUNCTION tokentrace.fill_rollup_totals(timestamptz, timestamptz) FROM PUBLIC;

SELECT tokentrace.fill_rollup_totals('-infinity', 'infinity');

-- As in 0060, and the four sums filled.
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
    PERFORM tokentrace.fill_rollup_totals(day_start, day_end);
    RETURN written;
END
$$;


-- --- the series ------------------------------------------------------------------------------
ALTER FUNCTION tokentrace.efficiency_series_range(timestamptz, timestamptz, interval, text)
    RENAME TO efficiency_series_raw;
COMMENT ON FUNCTION tokentrace.efficiency_series_raw(timestamptz, timestamptz, interval, text) IS
    'efficiency_series_range() from raw spans (exact percentiles), whatever the buckets (tokentrace).';

CREATE FUNCTION tokentrace.efficiency_series_range(
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
               r.operation NOT IN ('', 'load_model') AS is_call, r.operation = 'load_model' AS is_load,
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

COMMENT ON FUNCTION tokentrace.efficiency_series_range(timestamptz, timestamptz, interval, text) IS
    'efficiency_series() over [range_start, range_end), buckets laid from range_start; from rollups '
    'when the buckets line up with them (tokentrace).';

-- --- reader access (0030) ------------------------------------------------------------------
-- efficiency_series_raw() reads spans for a report: it joins the report functions.
CREATE OR REPLACE FUNCTION tokentrace.report_function_names() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[
        'retention_days', 'rollup_retention_days', 'raw_horizon',
        'span_summary', 'span_values', 'window_plan', 'window_parts',
        'efficiency', 'efficiency_range', 'efficiency_change',
        'efficiency_series', 'efficiency_series_range', 'efficiency_series_raw',
        'span_time_bounds', 'relation_growth', 'footprint_summary'
    ]::text[]
$$;

SELECT tokentrace.secure_report_functions();
