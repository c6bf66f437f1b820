-- tokentrace schema: efficiency_range() (so efficiency() and efficiency_24h) with one
-- cached plan, and p50/p95 without a pass per bin.
--
-- Why: at 10 M spans a 24-hour window took 3.5 ms or 7 ms depending on the session.
-- PL/pgSQL plans the function's query for its arguments on the first five calls and
-- then keeps a generic plan only if its estimated cost is no higher than theirs; with
-- model_filter NULL a custom plan folds `model_filter IS NULL OR …` away and always
-- looks a little cheaper, so some sessions re-planned the whole query, ~4 ms, on
-- every call. The plan has no choice worth re-making per call (every piece is an
-- index scan of one partition, the raw edges a statement of their own), so the
-- function now always runs its generic plan.
--
-- And the percentiles: 0060 packed each raw edge value into the histogram
-- (10^(12·bin) built from text per value), grouped the decoded and raw bins, and
-- took the total with a second window sum. Now only the rollups' sum is packed
-- and decoded; the raw edge values enter the cumulative sum as rows of their own
-- (rows of one bin are peers of the window sum, so each sees the bin's whole
-- count), and the total comes with the other sums: timed calls, the values the
-- histogram holds. Same columns, same figures, same interpolation as 0060.

-- --- efficiency over a window ------------------------------------------------------------
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
        SELECT ro.w, ro.model, ro.operation NOT IN ('', 'load_model') AS is_call,
               ro.operation = 'load_model' AS is_load, ro.spans, ro.errors, ro.input_tokens,
               ro.output_tokens, ro.timed_inference_ms, ro.timed_output_tokens, ro.decode_ms_tokens,
               ro.decode_output_tokens, ro.load_ms_n, ro.load_ms_sum, ro.mpt_packed, ro.timed_calls
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
               CASE WHEN rw.operation = 'load_model' THEN coalesce(rw.load_ms, rw.duration_ms) END,
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
              WHERE rw.ms_per_token IS NOT NULL AND rw.operation NOT IN ('', 'load_model')) hb
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

COMMENT ON FUNCTION tokentrace.efficiency_range(timestamptz, timestamptz, text) IS
    'efficiency() over [range_start, range_end): from rollups, raw spans only at the partial edges.';

-- CREATE OR REPLACE reset SECURITY DEFINER (0030).
SELECT tokentrace.secure_report_functions();
