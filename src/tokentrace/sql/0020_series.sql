-- tokentrace schema: the efficiency report over time (the dashboard's charts, Grafana).
-- Same definitions as tokentrace.efficiency(), per model and per time bucket:
-- token-weighted throughout (sum of inference ms / sum of output tokens over the calls
-- that reported tokens), model loads (operation = 'load_model') reported apart.

-- Over [range_start, range_end), in buckets laid from range_start: a bucket as long as
-- the range gives exactly one row per model, the range's totals. Only buckets with
-- spans are returned; a model without spans in a bucket has no row for it. (Grafana
-- panels call this one with $__timeFrom() and $__timeTo().)
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
LANGUAGE sql STABLE AS $$
    WITH s AS (
        SELECT date_bin(bucket, sp.start_time, range_start) AS bucket_start,
               sp.model,
               sp.operation = 'load_model' AS is_load,
               sp.input_tokens, sp.output_tokens, sp.inference_ms, sp.ms_per_token,
               sp.prefill_ms_per_token, sp.decode_ms_per_token, sp.load_ms, sp.duration_ms,
               sp.status
        FROM tokentrace.spans sp
        WHERE sp.start_time >= range_start AND sp.start_time < range_end
          AND sp.model IS NOT NULL
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

COMMENT ON FUNCTION tokentrace.efficiency_series_range(timestamptz, timestamptz, interval, text) IS
    'efficiency_series() over [range_start, range_end), buckets laid from range_start.';

-- The last `time_window` up to now (spans dated later, clock skew, included as
-- efficiency() includes them), in buckets laid from now() - time_window.
CREATE FUNCTION tokentrace.efficiency_series(
    time_window  interval DEFAULT '24 hours',
    bucket       interval DEFAULT '1 hour',
    model_filter text     DEFAULT NULL)
RETURNS TABLE (
    bucket_start          timestamptz,
    model                 text,
    calls                 bigint,
    input_tokens          bigint,
    output_tokens         bigint,
    weighted_ms_per_token double precision,
    p50_ms_per_token      double precision,
    p95_ms_per_token      double precision,
    prefill_ms_per_token  double precision,
    decode_ms_per_token   double precision,
    loads                 bigint,
    avg_load_ms           double precision,
    load_ms               double precision,
    inference_ms          double precision,
    errors                bigint)
LANGUAGE sql STABLE AS $$
    SELECT * FROM tokentrace.efficiency_series_range(now() - time_window, 'infinity', bucket, model_filter)
$$;

COMMENT ON FUNCTION tokentrace.efficiency_series(interval, interval, text) IS
    'Per model and time bucket over a window: calls, tokens, token-weighted ms/token, p50/p95, '
    'prefill/decode ms/token, loads, load and inference time, errors.';
