-- tokentrace schema: the dispatcher's question — for a request of P prompt tokens and
-- about O output tokens, how long will each model take now, and is it loaded?
--
-- 1. The rollups keep, per (grain, bucket, model, operation), the sums an exact least
--    squares fit of   ms = intercept + a·P + b·O   needs (y = a call's inference ms,
--    load excluded; P = input tokens, O = output tokens): n, ΣP, ΣO, Σy, ΣP², ΣO², ΣPO,
--    ΣPy, ΣOy, Σy². Only warm calls count there: a successful call with both token
--    counts and its inference time, whose in-call load (Ollama's load_duration) is
--    under 100 ms (tokentrace.is_cold(): a warm Ollama reports a few ms of it on every
--    call, a real load hundreds and up). A cold call's load goes to the load sums
--    instead (count, Σ, Σ² of its load ms), as does every load span's (Σ² added; the
--    count and Σ were there). And the times: the last call's end, the last load's end
--    (a load span's end, a cold call's start + its load), and the keep-alive the
--    latest call asked for (attribute tokentrace.request.keep_alive_s, seconds,
--    negative = forever) with the end of that call.
--    The trigger keeps them like the other sums: wrappers (0100) are left out of the
--    sums, or subtracted when they turn out to be wrappers later; the times are maxima
--    over every call span, wrappers included (a wrapper ends with its call, and a
--    maximum cannot be taken back), so they are the same whichever span arrives first.
--    rebuild_rollups() fills them from the raw spans (fill_rollup_latency()), and this
--    migration does so for the spans already stored.
--
-- 2. tokentrace.expected_latency(prompt_tokens, output_tokens, models, at, half_life)
--    fits, per model, from those sums read over the 14 days before `at` (5-minute rows
--    for the last 3 hours, hourly ones to 48 hours, daily ones beyond: at most ~100
--    rows per model and operation, whatever the store's size), each row weighted by
--    2^(-age / half_life) (default 30 minutes), its age taken at the midpoint of its
--    first and last span. A weighted sum of the rows' sums is the sum over their calls
--    with each call weighted by its row's weight, so the fit is exactly the weighted
--    least squares fit over the calls (a call's weight being its row's). Only ratios of
--    weights matter to the fit, so the ages are taken from each model's newest row
--    (no underflow for a model idle for days). When the system is singular (every
--    request the same size, P and O in proportion, a single call) the slopes that
--    cannot be fitted come from the server's own per-token timings (prefill, decode),
--    else the time goes to the output tokens (ms per output token); the intercept
--    always keeps the weighted mean. p90: the expected ms plus 1.2816 standard
--    deviations of the weighted residuals (and of the load times, for a cold model).
--
--    Warm: a model is resident until its last call's (or load's) end plus the
--    keep-alive the latest call asked for; with none asked, Ollama's default of 5
--    minutes when the model's calls report server load times (Ollama does, on every
--    call); a model that never showed a load (a hosted API, vLLM) is always warm. A
--    cold model's expected ms adds its expected load (the weighted mean of recent load
--    times: cold calls' and load spans').
--
--    Trust: 'thin' when the calls behind the fit weigh less than 5 calls (Kish's
--    effective number, (Σw)²/Σw²), 'stale' when the last call ended more than 6 hours
--    before `at`, 'unseen' for a model asked for that has no call or load in the 14
--    days: it comes last, never as the fastest.

-- --- the rules ------------------------------------------------------------------------------
CREATE FUNCTION tokentrace.is_cold(load_ms double precision) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(load_ms >= 100, false)
$$;
COMMENT ON FUNCTION tokentrace.is_cold(double precision) IS
    'Whether a call whose in-call load took load_ms paid a model load: 100 ms or more (a warm Ollama reports a few ms) (tokentrace: pure)';

-- A JSON number only, and one a float8 holds: a sender's odd value is no keep-alive,
-- never an error that would refuse its batch.
CREATE FUNCTION tokentrace.keep_alive_s(attributes jsonb) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(attributes -> 'tokentrace.request.keep_alive_s') = 'number' THEN
               CASE WHEN abs((attributes ->> 'tokentrace.request.keep_alive_s')::numeric) < 1e12
                    THEN (attributes ->> 'tokentrace.request.keep_alive_s')::double precision END
           END
$$;
COMMENT ON FUNCTION tokentrace.keep_alive_s(jsonb) IS
    'The keep-alive a call asked for, in seconds (negative: forever), from its attribute tokentrace.request.keep_alive_s; NULL when none (tokentrace: pure)';

-- --- the sums ------------------------------------------------------------------------------
ALTER TABLE tokentrace.span_rollups
    ADD COLUMN fit_n           bigint           NOT NULL DEFAULT 0,
    ADD COLUMN fit_p           double precision NOT NULL DEFAULT 0,
    ADD COLUMN fit_o           double precision NOT NULL DEFAULT 0,
    ADD COLUMN fit_y           double precision NOT NULL DEFAULT 0,
    ADD COLUMN fit_pp          double precision NOT NULL DEFAULT 0,
    ADD COLUMN fit_oo          double precision NOT NULL DEFAULT 0,
    ADD COLUMN fit_po          double precision NOT NULL DEFAULT 0,
    ADD COLUMN fit_py          double precision NOT NULL DEFAULT 0,
    ADD COLUMN fit_oy          double precision NOT NULL DEFAULT 0,
    ADD COLUMN fit_yy          double precision NOT NULL DEFAULT 0,
    ADD COLUMN cold_n          bigint           NOT NULL DEFAULT 0,
    ADD COLUMN cold_load_ms    double precision NOT NULL DEFAULT 0,
    ADD COLUMN cold_load_ms_sq double precision NOT NULL DEFAULT 0,
    ADD COLUMN load_ms_sq      double precision NOT NULL DEFAULT 0,
    ADD COLUMN last_call_end   timestamptz,
    ADD COLUMN last_load_end   timestamptz,
    ADD COLUMN keep_alive_at   timestamptz,
    ADD COLUMN keep_alive_s    double precision;
COMMENT ON COLUMN tokentrace.span_rollups.fit_n IS
    'Warm calls with both token counts and an inference time: the n of the latency fit (expected_latency) (tokentrace).';
COMMENT ON COLUMN tokentrace.span_rollups.fit_p IS
    'Σ input tokens over the fit''s calls; fit_o: Σ output tokens, fit_y: Σ inference ms, fit_pp/oo/po/py/oy/yy: Σ of the products (tokentrace).';
COMMENT ON COLUMN tokentrace.span_rollups.cold_n IS
    'Calls that paid a model load (is_cold(load_ms)); cold_load_ms, cold_load_ms_sq: Σ and Σ² of their load ms (tokentrace).';
COMMENT ON COLUMN tokentrace.span_rollups.load_ms_sq IS
    'Σ² of the load spans'' load ms (load_ms_n and load_ms_sum are their count and Σ) (tokentrace).';
COMMENT ON COLUMN tokentrace.span_rollups.keep_alive_s IS
    'The keep-alive (s, negative: forever) the call ending last (keep_alive_at) among those that asked for one asked for (tokentrace).';

-- The calls the latency fit takes: warm, successful, both token counts and an
-- inference time, all of them of a size a sum of squares holds.
CREATE FUNCTION tokentrace.is_fit_call(
    operation text, status text, input_tokens bigint, output_tokens bigint,
    inference_ms double precision, load_ms double precision) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT tokentrace.counts_as_call(operation) AND status IS DISTINCT FROM 'ERROR'
       AND NOT tokentrace.is_cold(load_ms)
       AND coalesce(input_tokens BETWEEN 0 AND 1000000000, false)
       AND coalesce(output_tokens BETWEEN 0 AND 1000000000, false)
       AND coalesce(inference_ms >= 0 AND inference_ms < 1e12, false)
$$;
COMMENT ON FUNCTION tokentrace.is_fit_call(text, text, bigint, bigint, double precision, double precision) IS
    'Whether a counted span is one of the latency fit''s calls: a warm, successful call with both token counts and its inference time (tokentrace: pure)';

-- A cold call's load, or a load span's, in ms (NULL for anything else); bounded so
-- that its square and its end time stay in range whatever a sender wrote.
CREATE FUNCTION tokentrace.paid_load_ms(operation text, load_ms double precision, duration_ms double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN tokentrace.is_load(operation) THEN least(greatest(coalesce(load_ms, duration_ms), 0), 1e10)
                WHEN tokentrace.is_cold(load_ms) THEN least(load_ms, 1e10) END
$$;
COMMENT ON FUNCTION tokentrace.paid_load_ms(text, double precision, double precision) IS
    'The load a span stands for, in ms: a load span''s, or a cold call''s in-call load; NULL otherwise (tokentrace: pure)';

-- --- the trigger -----------------------------------------------------------------------------
-- As in 0100, with the latency sums and times beside the other sums.
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
        prefill_ms_tokens, prefill_input_tokens, inference_ms_total, load_ms_total,
        fit_n, fit_p, fit_o, fit_y, fit_pp, fit_oo, fit_po, fit_py, fit_oy, fit_yy,
        cold_n, cold_load_ms, cold_load_ms_sq, load_ms_sq,
        last_call_end, last_load_end, keep_alive_at, keep_alive_s)
    WITH w AS (
        SELECT * FROM unnest(w_start, w_trace, w_span) AS w(start_time, trace_id, span_id)
    ), src0 AS (
        SELECT 1 AS sign, n.start_time, n.end_time, n.model, n.operation, n.status, n.input_tokens,
               n.output_tokens, n.inference_ms, n.ms_per_token, n.decode_ms_per_token,
               n.prefill_ms_per_token, n.load_ms, n.duration_ms,
               n.load_ms AS span_load_ms, n.duration_ms AS span_duration_ms, n.attributes
        FROM new_spans n
        WHERE n.model IS NOT NULL
          AND NOT EXISTS (SELECT FROM w WHERE w.start_time = n.start_time
                            AND w.trace_id = n.trace_id AND w.span_id = n.span_id)
        UNION ALL
        -- A wrapper stored now: only its times (first/last start, last call, load, keep-alive).
        SELECT 0, n.start_time, n.end_time, n.model, n.operation, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, n.load_ms, n.duration_ms, n.attributes
        FROM new_spans n
        JOIN w ON w.start_time = n.start_time AND w.trace_id = n.trace_id AND w.span_id = n.span_id
        WHERE n.model IS NOT NULL
        UNION ALL
        -- A wrapper stored earlier, summed then: subtracted (its times stay: maxima).
        SELECT -1, l.start_time, l.end_time, l.model, l.operation, l.status, l.input_tokens,
               l.output_tokens, l.inference_ms, l.ms_per_token, l.decode_ms_per_token,
               l.prefill_ms_per_token, l.load_ms, l.duration_ms, l.load_ms, l.duration_ms,
               l.attributes
        FROM unnest(late) l
    ), src AS (
        SELECT s.*,
               tokentrace.is_fit_call(s.operation, s.status, s.input_tokens, s.output_tokens,
                                      s.inference_ms, s.load_ms) AS fit,
               CASE WHEN NOT tokentrace.is_load(s.operation) THEN tokentrace.paid_load_ms(s.operation, s.load_ms, NULL) END
                   AS cold_ms,
               CASE WHEN tokentrace.is_load(s.operation) THEN tokentrace.paid_load_ms(s.operation, s.load_ms, s.duration_ms) END
                   AS load_span_ms,
               CASE WHEN tokentrace.counts_as_call(s.operation) THEN s.end_time END AS call_end,
               CASE WHEN tokentrace.is_load(s.operation) THEN s.end_time
                    ELSE s.start_time + tokentrace.paid_load_ms(s.operation, s.span_load_ms, NULL)
                                        * interval '1 millisecond' END AS load_end,
               CASE WHEN tokentrace.counts_as_call(s.operation) THEN tokentrace.keep_alive_s(s.attributes) END AS ka
        FROM src0 s
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
               sum(s.sign * s.load_ms) AS load_ms_total,
               sum(s.sign) FILTER (WHERE s.fit) AS fit_n,
               sum(s.sign * s.input_tokens::float8) FILTER (WHERE s.fit) AS fit_p,
               sum(s.sign * s.output_tokens::float8) FILTER (WHERE s.fit) AS fit_o,
               sum(s.sign * s.inference_ms) FILTER (WHERE s.fit) AS fit_y,
               sum(s.sign * s.input_tokens::float8 * s.input_tokens) FILTER (WHERE s.fit) AS fit_pp,
               sum(s.sign * s.output_tokens::float8 * s.output_tokens) FILTER (WHERE s.fit) AS fit_oo,
               sum(s.sign * s.input_tokens::float8 * s.output_tokens) FILTER (WHERE s.fit) AS fit_po,
               sum(s.sign * s.input_tokens * s.inference_ms) FILTER (WHERE s.fit) AS fit_py,
               sum(s.sign * s.output_tokens * s.inference_ms) FILTER (WHERE s.fit) AS fit_oy,
               sum(s.sign * s.inference_ms * s.inference_ms) FILTER (WHERE s.fit) AS fit_yy,
               sum(s.sign) FILTER (WHERE s.cold_ms IS NOT NULL) AS cold_n,
               sum(s.sign * s.cold_ms) AS cold_load_ms,
               sum(s.sign * s.cold_ms * s.cold_ms) AS cold_load_ms_sq,
               sum(s.sign * s.load_span_ms * s.load_span_ms) AS load_ms_sq,
               max(s.call_end) AS last_call_end,
               max(s.load_end) AS last_load_end,
               max(s.call_end) FILTER (WHERE s.ka IS NOT NULL) AS keep_alive_at,
               (array_agg(s.ka ORDER BY s.call_end DESC, s.ka DESC) FILTER (WHERE s.ka IS NOT NULL))[1]
                   AS keep_alive_s
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
                   AS packed,
               coalesce(sum(sb.fit_n), 0) AS fit_n,
               coalesce(sum(sb.fit_p), 0) AS fit_p, coalesce(sum(sb.fit_o), 0) AS fit_o,
               coalesce(sum(sb.fit_y), 0) AS fit_y, coalesce(sum(sb.fit_pp), 0) AS fit_pp,
               coalesce(sum(sb.fit_oo), 0) AS fit_oo, coalesce(sum(sb.fit_po), 0) AS fit_po,
               coalesce(sum(sb.fit_py), 0) AS fit_py, coalesce(sum(sb.fit_oy), 0) AS fit_oy,
               coalesce(sum(sb.fit_yy), 0) AS fit_yy,
               coalesce(sum(sb.cold_n), 0) AS cold_n, coalesce(sum(sb.cold_load_ms), 0) AS cold_load_ms,
               coalesce(sum(sb.cold_load_ms_sq), 0) AS cold_load_ms_sq,
               coalesce(sum(sb.load_ms_sq), 0) AS load_ms_sq,
               max(sb.last_call_end) AS last_call_end, max(sb.last_load_end) AS last_load_end,
               max(sb.keep_alive_at) AS keep_alive_at,
               (array_agg(sb.keep_alive_s ORDER BY sb.keep_alive_at DESC, sb.keep_alive_s DESC)
                    FILTER (WHERE sb.keep_alive_at IS NOT NULL))[1] AS keep_alive_s
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
               sum(f.packed) AS packed,
               sum(f.fit_n)::bigint AS fit_n, sum(f.fit_p) AS fit_p, sum(f.fit_o) AS fit_o,
               sum(f.fit_y) AS fit_y, sum(f.fit_pp) AS fit_pp, sum(f.fit_oo) AS fit_oo,
               sum(f.fit_po) AS fit_po, sum(f.fit_py) AS fit_py, sum(f.fit_oy) AS fit_oy,
               sum(f.fit_yy) AS fit_yy, sum(f.cold_n)::bigint AS cold_n,
               sum(f.cold_load_ms) AS cold_load_ms, sum(f.cold_load_ms_sq) AS cold_load_ms_sq,
               sum(f.load_ms_sq) AS load_ms_sq,
               max(f.last_call_end) AS last_call_end, max(f.last_load_end) AS last_load_end,
               max(f.keep_alive_at) AS keep_alive_at,
               (array_agg(f.keep_alive_s ORDER BY f.keep_alive_at DESC, f.keep_alive_s DESC)
                    FILTER (WHERE f.keep_alive_at IS NOT NULL))[1] AS keep_alive_s
        FROM f CROSS JOIN g
        GROUP BY 1, 2, 3, 4
    )
    SELECT t.grain, t.bucket, t.model, t.operation, t.spans, t.errors, t.input_tokens,
           t.output_tokens, t.timed_calls, t.timed_inference_ms, t.timed_output_tokens,
           t.decode_ms_tokens, t.decode_output_tokens, t.load_ms_n, t.load_ms_sum,
           t.first_start, t.last_start, t.packed,
           t.prefill_ms_tokens, t.prefill_input_tokens, t.inference_ms_total, t.load_ms_total,
           t.fit_n, t.fit_p, t.fit_o, t.fit_y, t.fit_pp, t.fit_oo, t.fit_po, t.fit_py, t.fit_oy, t.fit_yy,
           t.cold_n, t.cold_load_ms, t.cold_load_ms_sq, t.load_ms_sq,
           t.last_call_end, t.last_load_end, t.keep_alive_at, t.keep_alive_s
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
        inference_ms_total   = r.inference_ms_total + excluded.inference_ms_total,
        load_ms_total        = r.load_ms_total + excluded.load_ms_total,
        fit_n                = r.fit_n + excluded.fit_n,
        fit_p                = r.fit_p + excluded.fit_p,
        fit_o                = r.fit_o + excluded.fit_o,
        fit_y                = r.fit_y + excluded.fit_y,
        fit_pp               = r.fit_pp + excluded.fit_pp,
        fit_oo               = r.fit_oo + excluded.fit_oo,
        fit_po               = r.fit_po + excluded.fit_po,
        fit_py               = r.fit_py + excluded.fit_py,
        fit_oy               = r.fit_oy + excluded.fit_oy,
        fit_yy               = r.fit_yy + excluded.fit_yy,
        cold_n               = r.cold_n + excluded.cold_n,
        cold_load_ms         = r.cold_load_ms + excluded.cold_load_ms,
        cold_load_ms_sq      = r.cold_load_ms_sq + excluded.cold_load_ms_sq,
        load_ms_sq           = r.load_ms_sq + excluded.load_ms_sq,
        last_call_end        = greatest(r.last_call_end, excluded.last_call_end),
        last_load_end        = greatest(r.last_load_end, excluded.last_load_end),
        -- The keep-alive of the latest call that asked for one (ties: the longer).
        keep_alive_at        = greatest(r.keep_alive_at, excluded.keep_alive_at),
        keep_alive_s         = CASE WHEN excluded.keep_alive_at IS NOT NULL
                                     AND (r.keep_alive_at IS NULL
                                          OR (excluded.keep_alive_at, excluded.keep_alive_s)
                                             > (r.keep_alive_at, r.keep_alive_s))
                                    THEN excluded.keep_alive_s ELSE r.keep_alive_s END;
    RETURN NULL;
END
$$;

-- --- rebuild: the same sums from raw spans --------------------------------------------------
-- As the trigger sums them: the fit and load sums over the spans that count (not
-- wrappers), the times over every span with a model, wrappers included.
CREATE FUNCTION tokentrace.fill_rollup_latency(range_start timestamptz, range_end timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    updated bigint;
BEGIN
    WITH s AS (
        SELECT sp.start_time, sp.model COLLATE "C" AS model,
               coalesce(sp.operation, '') COLLATE "C" AS operation,
               NOT sp.wrapper AND tokentrace.is_fit_call(sp.operation, sp.status, sp.input_tokens,
                                                         sp.output_tokens, sp.inference_ms, sp.load_ms) AS fit,
               sp.input_tokens::float8 AS p, sp.output_tokens::float8 AS o, sp.inference_ms AS y,
               CASE WHEN NOT sp.wrapper AND NOT tokentrace.is_load(sp.operation)
                    THEN tokentrace.paid_load_ms(sp.operation, sp.load_ms, NULL) END AS cold_ms,
               CASE WHEN NOT sp.wrapper AND tokentrace.is_load(sp.operation)
                    THEN tokentrace.paid_load_ms(sp.operation, sp.load_ms, sp.duration_ms) END AS load_span_ms,
               CASE WHEN tokentrace.counts_as_call(sp.operation) THEN sp.end_time END AS call_end,
               CASE WHEN tokentrace.is_load(sp.operation) THEN sp.end_time
                    ELSE sp.start_time + tokentrace.paid_load_ms(sp.operation, sp.load_ms, NULL)
                                         * interval '1 millisecond' END AS load_end,
               CASE WHEN tokentrace.counts_as_call(sp.operation) THEN tokentrace.keep_alive_s(sp.attributes) END AS ka
        FROM tokentrace.spans sp
        WHERE sp.start_time >= range_start AND sp.start_time < range_end AND sp.model IS NOT NULL
    ), t AS (
        SELECT g.grain, tokentrace.bucket_floor(s.start_time, g.grain) AS bucket, s.model, s.operation,
               count(*) FILTER (WHERE s.fit) AS fit_n,
               coalesce(sum(s.p) FILTER (WHERE s.fit), 0) AS fit_p,
               coalesce(sum(s.o) FILTER (WHERE s.fit), 0) AS fit_o,
               coalesce(sum(s.y) FILTER (WHERE s.fit), 0) AS fit_y,
               coalesce(sum(s.p * s.p) FILTER (WHERE s.fit), 0) AS fit_pp,
               coalesce(sum(s.o * s.o) FILTER (WHERE s.fit), 0) AS fit_oo,
               coalesce(sum(s.p * s.o) FILTER (WHERE s.fit), 0) AS fit_po,
               coalesce(sum(s.p * s.y) FILTER (WHERE s.fit), 0) AS fit_py,
               coalesce(sum(s.o * s.y) FILTER (WHERE s.fit), 0) AS fit_oy,
               coalesce(sum(s.y * s.y) FILTER (WHERE s.fit), 0) AS fit_yy,
               count(s.cold_ms) AS cold_n,
               coalesce(sum(s.cold_ms), 0) AS cold_load_ms,
               coalesce(sum(s.cold_ms * s.cold_ms), 0) AS cold_load_ms_sq,
               coalesce(sum(s.load_span_ms * s.load_span_ms), 0) AS load_ms_sq,
               max(s.call_end) AS last_call_end, max(s.load_end) AS last_load_end,
               max(s.call_end) FILTER (WHERE s.ka IS NOT NULL) AS keep_alive_at,
               (array_agg(s.ka ORDER BY s.call_end DESC, s.ka DESC) FILTER (WHERE s.ka IS NOT NULL))[1]
                   AS keep_alive_s
        FROM s CROSS JOIN (VALUES (interval '00:05:00'), (interval '01:00:00'), (interval '24:00:00')) g(grain)
        GROUP BY 1, 2, 3, 4
    )
    UPDATE tokentrace.span_rollups r
    SET fit_n = t.fit_n, fit_p = t.fit_p, fit_o = t.fit_o, fit_y = t.fit_y, fit_pp = t.fit_pp,
        fit_oo = t.fit_oo, fit_po = t.fit_po, fit_py = t.fit_py, fit_oy = t.fit_oy, fit_yy = t.fit_yy,
        cold_n = t.cold_n, cold_load_ms = t.cold_load_ms, cold_load_ms_sq = t.cold_load_ms_sq,
        load_ms_sq = t.load_ms_sq, last_call_end = t.last_call_end, last_load_end = t.last_load_end,
        keep_alive_at = t.keep_alive_at, keep_alive_s = t.keep_alive_s
    FROM t
    WHERE r.grain = t.grain AND r.bucket = t.bucket AND r.model = t.model AND r.operation = t.operation;
    GET DIAGNOSTICS updated = ROW_COUNT;
    RETURN updated;
END
$$;
COMMENT ON FUNCTION tokentrace.fill_rollup_latency(timestamptz, timestamptz) IS
    'Fills the rollups'' latency-fit sums, load sums and times from raw spans (tokentrace: write)';
REVOKE EXECUTE ON FUNCTION tokentrace.fill_rollup_latency(timestamptz, timestamptz) FROM PUBLIC;

-- As in 0060/0080, and the latency sums filled too.
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
    PERFORM tokentrace.fill_rollup_latency(day_start, day_end);
    RETURN written;
END
$$;

-- --- the answer ---------------------------------------------------------------------------
CREATE FUNCTION tokentrace.expected_latency(
    prompt_tokens integer,
    output_tokens integer,
    models        text[]      DEFAULT NULL,
    at            timestamptz DEFAULT now(),
    half_life     interval    DEFAULT '30 minutes')
RETURNS TABLE (
    rank                 integer,
    model                text,
    expected_ms          double precision,  -- warm_ms, plus the expected load when cold
    p90_ms               double precision,
    warm                 boolean,
    expected_load_ms     double precision,  -- what a load of this model takes (recent loads)
    prefill_ms_per_token double precision,  -- the fit's slopes: ms per prompt token
    decode_ms_per_token  double precision,  -- … and per output token
    calls                bigint,            -- warm calls behind the fit (14 days, unweighted)
    trusted              boolean,
    reason               text,              -- 'thin', 'stale', 'unseen' or NULL (trusted)
    warm_ms              double precision,  -- intercept + prefill·P + decode·O
    intercept_ms         double precision,
    switch_cost_ms       double precision,  -- 0 when warm, else expected_load_ms
    effective_calls      double precision,  -- (Σw)² / Σw²: what the weighted calls are worth
    cold_calls           bigint,
    loads                bigint,
    last_call            timestamptz,       -- the end of the model's last call
    last_load            timestamptz,
    keep_alive_s         double precision,  -- the keep-alive in force (negative: forever)
    resident_until       timestamptz,       -- NULL: no expiry known
    residency            text,              -- 'keep_alive', 'ollama_default' or 'no_expiry'
    method               text)              -- 'least_squares', '…_prompt', '…_output', 'ratios'
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
DECLARE
    want_p double precision := $1;
    want_o double precision := $2;
    wanted text[] := $3;
    moment timestamptz := $4;
    hl_s   double precision := extract(epoch FROM $5);
    t5     timestamptz;
    t1     timestamptz;
    t0     timestamptz;
BEGIN
    IF $1 IS NULL OR $1 < 0 OR $1 > 10000000 THEN
        RAISE EXCEPTION 'prompt_tokens must be a whole number from 0 to 10000000, not %',
            coalesce($1::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    IF $2 IS NULL OR $2 < 0 OR $2 > 10000000 THEN
        RAISE EXCEPTION 'output_tokens must be a whole number from 0 to 10000000, not %',
            coalesce($2::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    IF moment IS NULL OR NOT isfinite(moment) THEN
        RAISE EXCEPTION 'at must be a finite time, not %', coalesce(moment::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF hl_s IS NULL OR hl_s <= 0 THEN
        RAISE EXCEPTION 'half_life must be a positive interval, not %', coalesce($5::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    -- 5-minute rows for the last 3 hours (the bucket holding `at` included: the trigger
    -- keeps it current), hourly ones back to 48 hours, daily ones back to 14 days.
    t5 := tokentrace.bucket_floor(moment - interval '3 hours', '01:00:00');
    t1 := tokentrace.bucket_floor(moment - interval '48 hours', '24:00:00');
    t0 := tokentrace.bucket_floor(moment - interval '14 days', '24:00:00');

    RETURN QUERY
    WITH x AS MATERIALIZED (
        SELECT r.*
        FROM (VALUES (interval '00:05:00', t5, moment), (interval '01:00:00', t1, t5),
                     (interval '24:00:00', t0, t1)) pl(grain, lo, hi)
        CROSS JOIN LATERAL (
            SELECT r.model, r.operation, r.spans, r.first_start, r.last_start,
                   r.prefill_ms_tokens, r.prefill_input_tokens, r.decode_ms_tokens,
                   r.decode_output_tokens, r.load_ms_n, r.load_ms_sum, r.load_ms_total,
                   r.fit_n, r.fit_p, r.fit_o, r.fit_y, r.fit_pp, r.fit_oo, r.fit_po, r.fit_py,
                   r.fit_oy, r.fit_yy, r.cold_n, r.cold_load_ms, r.cold_load_ms_sq, r.load_ms_sq,
                   r.last_call_end, r.last_load_end, r.keep_alive_at, r.keep_alive_s
            FROM tokentrace.span_rollups r
            WHERE r.grain = pl.grain AND r.bucket >= pl.lo AND r.bucket < pl.hi
              AND (wanted IS NULL OR r.model = ANY (wanted))
            OFFSET 0) r
    ), b AS (
        SELECT x.*, tokentrace.counts_as_call(x.operation) AS is_call,
               tokentrace.is_load(x.operation) AS is_load,
               x.first_start + (x.last_start - x.first_start) / 2 AS t_mid
        FROM x
    ), a AS (
        SELECT b.*, extract(epoch FROM max(b.t_mid) OVER (PARTITION BY b.model) - b.t_mid) / hl_s AS age
        FROM b
    ), w AS (
        -- Ages from the model's newest row: only ratios of weights matter, and these never
        -- underflow (a row 500 half-lives older than the newest weighs nothing).
        SELECT a.*, CASE WHEN a.age > 500 THEN 0::float8 ELSE power(2::float8, -a.age) END AS w
        FROM a
    ), s AS (
        SELECT w.model,
               coalesce(sum(w.fit_n) FILTER (WHERE w.is_call), 0)::bigint AS n,
               sum(w.w * w.fit_n) FILTER (WHERE w.is_call) AS sw,
               sum(w.w * w.w * w.fit_n) FILTER (WHERE w.is_call) AS sw2,
               sum(w.w * w.fit_p) FILTER (WHERE w.is_call) AS sp,
               sum(w.w * w.fit_o) FILTER (WHERE w.is_call) AS so,
               sum(w.w * w.fit_y) FILTER (WHERE w.is_call) AS sy,
               sum(w.w * w.fit_pp) FILTER (WHERE w.is_call) AS spp,
               sum(w.w * w.fit_oo) FILTER (WHERE w.is_call) AS soo,
               sum(w.w * w.fit_po) FILTER (WHERE w.is_call) AS spo,
               sum(w.w * w.fit_py) FILTER (WHERE w.is_call) AS spy,
               sum(w.w * w.fit_oy) FILTER (WHERE w.is_call) AS soy,
               sum(w.w * w.fit_yy) FILTER (WHERE w.is_call) AS syy,
               sum(w.w * w.prefill_ms_tokens) FILTER (WHERE w.is_call)
                 / nullif(sum(w.w * w.prefill_input_tokens)
                          FILTER (WHERE w.is_call AND w.prefill_ms_tokens IS NOT NULL), 0) AS a_r,
               sum(w.w * w.decode_ms_tokens) FILTER (WHERE w.is_call)
                 / nullif(sum(w.w * w.decode_output_tokens)
                          FILTER (WHERE w.is_call AND w.decode_ms_tokens IS NOT NULL), 0) AS b_r,
               sum(w.w * (w.cold_n + CASE WHEN w.is_load THEN w.load_ms_n ELSE 0 END)) AS lw,
               sum(w.w * (w.cold_load_ms + CASE WHEN w.is_load THEN coalesce(w.load_ms_sum, 0) ELSE 0 END)) AS ls,
               sum(w.w * (w.cold_load_ms_sq + w.load_ms_sq)) AS lss,
               coalesce(sum(w.cold_n), 0)::bigint AS cold_calls,
               coalesce(sum(w.spans) FILTER (WHERE w.is_load), 0)::bigint AS loads,
               max(w.last_call_end) AS last_call,
               max(w.last_load_end) AS last_load,
               max(w.keep_alive_at) AS ka_at,
               (array_agg(w.keep_alive_s ORDER BY w.keep_alive_at DESC, w.keep_alive_s DESC)
                    FILTER (WHERE w.keep_alive_at IS NOT NULL))[1] AS ka_s,
               coalesce(sum(w.load_ms_total) FILTER (WHERE w.is_call), 0) > 0
                   OR coalesce(sum(w.cold_n), 0) > 0 AS server_loads
        FROM w
        GROUP BY w.model
        HAVING sum(w.spans) <> 0  -- wrappers only: no model's rows
    ), m AS (
        SELECT s.*, s.sp / nullif(s.sw, 0) AS mp, s.so / nullif(s.sw, 0) AS mo,
               s.sy / nullif(s.sw, 0) AS my, s.sw * s.sw / nullif(s.sw2, 0) AS n_eff
        FROM s
    ), v AS (
        -- Weighted (co)variances about the means.
        SELECT m.*, m.spp / nullif(m.sw, 0) - m.mp * m.mp AS cpp, m.soo / nullif(m.sw, 0) - m.mo * m.mo AS coo,
               m.spo / nullif(m.sw, 0) - m.mp * m.mo AS cpo, m.spy / nullif(m.sw, 0) - m.mp * m.my AS cpy,
               m.soy / nullif(m.sw, 0) - m.mo * m.my AS coy, m.syy / nullif(m.sw, 0) - m.my * m.my AS cyy
        FROM m
    ), k AS (
        SELECT v.*, coalesce(v.cpp > 1e-9 * (v.mp * v.mp + 1), false) AS vp,
               coalesce(v.coo > 1e-9 * (v.mo * v.mo + 1), false) AS vo,
               v.cpp * v.coo - v.cpo * v.cpo AS det
        FROM v
    ), full_fit AS (
        SELECT k.*,
               CASE WHEN k.vp AND k.vo AND k.det > 1e-9 * k.cpp * k.coo
                    THEN (k.cpy * k.coo - k.coy * k.cpo) / k.det END AS a_f,
               CASE WHEN k.vp AND k.vo AND k.det > 1e-9 * k.cpp * k.coo
                    THEN (k.coy * k.cpp - k.cpy * k.cpo) / k.det END AS b_f
        FROM k
    ), sa AS (
        -- The prompt slope, and how it was had. A slope the data cannot give (every
        -- request the same size, sizes in proportion) is the server's own per-token
        -- timing where it reports one; a negative fitted slope (noise) is fixed at 0 and
        -- the other refitted alone.
        SELECT f.*,
               CASE WHEN f.a_f >= 0 AND f.b_f >= 0 THEN f.a_f
                    WHEN f.a_f < 0 THEN 0
                    WHEN f.b_f < 0 THEN greatest(f.cpy / f.cpp, 0)
                    WHEN f.vo THEN coalesce(f.a_r, 0)
                    WHEN f.vp THEN greatest(f.cpy / f.cpp, 0)
                    ELSE coalesce(f.a_r, 0) END AS a,
               CASE WHEN f.sw IS NULL OR f.sw <= 0 THEN NULL
                    WHEN f.a_f >= 0 AND f.b_f >= 0 THEN 'least_squares'
                    WHEN f.a_f < 0 OR (f.a_f IS NULL AND f.vo) THEN 'least_squares_output'
                    WHEN f.b_f < 0 OR f.vp THEN 'least_squares_prompt'
                    ELSE 'ratios' END AS method
        FROM full_fit f
    ), sb AS (
        SELECT sa.*,
               CASE WHEN sa.method IS NULL THEN NULL
                    WHEN sa.a_f >= 0 AND sa.b_f >= 0 THEN sa.b_f
                    WHEN sa.a_f < 0 THEN greatest(sa.coy / sa.coo, 0)
                    WHEN sa.b_f < 0 THEN 0
                    WHEN sa.method = 'least_squares_output' THEN greatest((sa.coy - sa.a * sa.cpo) / sa.coo, 0)
                    -- the output tokens cannot be told from the intercept: the server's
                    -- decode timing, else the time not spent on the prompt, per output token
                    ELSE coalesce(sa.b_r, CASE WHEN sa.mo > 0 THEN greatest((sa.my - sa.a * sa.mp) / sa.mo, 0)
                                               ELSE 0 END) END AS b,
               CASE sa.method WHEN 'least_squares' THEN 3 WHEN 'ratios' THEN 1 ELSE 2 END AS npar
        FROM sa
    ), fit AS (
        SELECT sb.*, sb.my - sb.a * sb.mp - sb.b * sb.mo AS c,
               greatest(sb.cyy - 2 * sb.a * sb.cpy - 2 * sb.b * sb.coy + sb.a * sb.a * sb.cpp
                        + sb.b * sb.b * sb.coo + 2 * sb.a * sb.b * sb.cpo, 0) AS mse
        FROM sb
    ), st AS (
        SELECT f.*,
               CASE WHEN f.ka_at IS NOT NULL THEN 'keep_alive'
                    WHEN f.server_loads THEN 'ollama_default'
                    ELSE 'no_expiry' END AS res,
               CASE WHEN f.ka_at IS NOT NULL THEN f.ka_s WHEN f.server_loads THEN 300::float8 END AS ka,
               greatest(f.last_call, f.last_load) AS last_active,
               f.ls / nullif(f.lw, 0) AS load_mean,
               greatest(f.lss / nullif(f.lw, 0) - (f.ls / nullif(f.lw, 0)) ^ 2, 0) AS load_var,
               CASE WHEN f.method IS NOT NULL THEN greatest(f.c + f.a * want_p + f.b * want_o, 0) END AS warm_est,
               CASE WHEN f.n_eff > f.npar THEN f.mse * f.n_eff / (f.n_eff - f.npar) END AS sigma2
        FROM fit f
    ), ru AS (
        SELECT st.*,
               CASE WHEN st.res = 'no_expiry' OR st.ka < 0 THEN NULL
                    ELSE st.last_active + st.ka * interval '1 second' END AS until
        FROM st
    ), hot AS (
        SELECT ru.*, (ru.res = 'no_expiry' OR ru.ka < 0 OR ru.until > moment) AS is_warm
        FROM ru
    ), est AS (
        SELECT h.model, h.warm_est + CASE WHEN h.is_warm THEN 0 ELSE coalesce(h.load_mean, 0) END AS e,
               h.warm_est + CASE WHEN h.is_warm THEN 0 ELSE coalesce(h.load_mean, 0) END
                 + 1.2815515655446004 * sqrt(h.sigma2 + CASE WHEN h.is_warm THEN 0 ELSE coalesce(h.load_var, 0) END)
                   AS p90,
               h.is_warm, h.load_mean, h.a, h.b, h.n,
               CASE WHEN h.method IS NULL OR h.n_eff < 5 THEN 'thin'
                    WHEN h.last_call < moment - interval '6 hours' THEN 'stale' END AS why,
               h.warm_est, h.c, CASE WHEN h.is_warm THEN 0 ELSE h.load_mean END AS switch,
               h.n_eff, h.cold_calls, h.loads, h.last_call, h.last_load, h.ka, h.until, h.res, h.method
        FROM hot h
        UNION ALL
        SELECT u.m, NULL, NULL, false, NULL, NULL, NULL, 0, 'unseen', NULL, NULL, NULL, NULL, 0, 0,
               NULL, NULL, NULL, NULL, NULL, NULL
        FROM (SELECT DISTINCT q.m FROM unnest(wanted) q(m) WHERE q.m IS NOT NULL) u
        WHERE NOT EXISTS (SELECT FROM s WHERE s.model = u.m)
    )
    SELECT (row_number() OVER (ORDER BY e.why IS NOT DISTINCT FROM 'unseen', e.e NULLS LAST, e.model))::integer,
           e.model, e.e, e.p90, e.is_warm, e.load_mean,
           CASE WHEN e.method IS NOT NULL THEN e.a END, CASE WHEN e.method IS NOT NULL THEN e.b END,
           e.n, e.why IS NULL, e.why, e.warm_est, CASE WHEN e.method IS NOT NULL THEN e.c END,
           e.switch, e.n_eff, e.cold_calls, e.loads, e.last_call, e.last_load, e.ka, e.until, e.res, e.method
    FROM est e
    ORDER BY 1;
END
$$;
COMMENT ON FUNCTION tokentrace.expected_latency(integer, integer, text[], timestamptz, interval) IS
    'Per model, fastest first: the expected ms (and p90) of a request of prompt_tokens and output_tokens at `at`, from a recency-weighted least squares fit over the rollups (half_life), warm or cold (keep-alive), the expected load, the calls behind it and whether to trust it (tokentrace: report)';

-- --- the spans already stored -------------------------------------------------------------
-- Their sums, from the raw spans kept (rows of days already pruned keep zeros: no fit).
SELECT tokentrace.fill_rollup_latency(tokentrace.raw_horizon(), 'infinity');

-- CREATE OR REPLACE reset SECURITY DEFINER (0030); the new report function gets it too.
SELECT tokentrace.secure_report_functions();
